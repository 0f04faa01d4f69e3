"""Limits, on servers of their own configured for them: per-connection rate limits answer
`rate_limited` and never close; history is capped; a reader that never reads is closed
with 1008 while everyone else keeps receiving everything."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.accounts import funded, sign_up
from tests.live_server import LiveServer
from tests.room_client import (
    RoomClient,
    chat,
    fence,
    gift,
    gift_events,
    live_room,
    seqs,
)


def serving(
    redis_url: str, factory: pytest.TempPathFactory, name: str, env: dict[str, str]
) -> Iterator[LiveServer]:
    server = LiveServer(redis_url, log_dir=factory.mktemp(name), env=env).start()
    try:
        yield server
    finally:
        server.stop()


# Chat unlimited, so a flood of long lines can fill a socket's buffers.
FLOOD = {"GS_CHAT_RATE_PER_S": "100000", "GS_CHAT_BURST": "100000"}


@pytest.fixture(scope="module")
def limited_server(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {
        "GS_GIFT_RATE_PER_S": "0",
        "GS_GIFT_BURST": "5",
        "GS_CHAT_RATE_PER_S": "0",
        "GS_CHAT_BURST": "3",
        "GS_HISTORY_EVENTS": "10",
    }
    yield from serving(redis_url, tmp_path_factory, "limited", env)


@pytest.fixture(scope="module")
def flood_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # Default socket settings (buffer bound, kernel send buffer, stall time, pings).
    yield from serving(redis_url, tmp_path_factory, "flood", FLOOD)


@pytest.fixture(scope="module")
def compressing_server(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    yield from serving(redis_url, tmp_path_factory, "deflate", {"GS_WS_COMPRESSION": "1"})


@pytest.fixture(scope="module")
def quick_drop_server(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {"GS_SOCKET_BUFFER_BYTES": "16384", "GS_SLOW_CLOSE_TIMEOUT_S": "1", **FLOOD}
    yield from serving(redis_url, tmp_path_factory, "drop", env)


async def never_reading(server: LiveServer, room_id: str) -> RoomClient:
    """A viewer that stops reading at once: a tiny receive buffer, one frame of queue.
    Before its server-side bound is reached, the kernel's buffers on both ends (a few MiB
    on loopback) fill up: hence floods of long chat lines in the tests that use it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    return await RoomClient.open(server.ws_url, room_id, sock=sock, max_queue=1)


@contextlib.asynccontextmanager
async def client_of(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
        yield http


async def test_gift_and_chat_rate_limits_answer_rate_limited_and_keep_the_connection(
    limited_server: LiveServer,
) -> None:
    async with client_of(limited_server) as http:
        _, room_id = await live_room(http)
        fan = await funded(http, "p100")
        url = limited_server.ws_url
        client = await RoomClient.open(url, room_id, token=fan.token)
        try:
            answers = [await client.request(gift()) for _ in range(7)]
            assert [a["type"] for a in answers] == ["ack"] * 5 + ["error"] * 2
            assert {a["code"] for a in answers[5:]} == {"rate_limited"}
            assert (await http.get("/api/wallet", headers=fan.headers)).json()["coins"] == 95

            lines = [chat(f"line {i}") for i in range(4)]
            for line in lines:
                await client.send(line)
            await client.send({"type": "ping"})
            await client.until_type("pong")
            assert lines[3]["request_id"] in client.answers
            assert client.answers[lines[3]["request_id"]][0]["code"] == "rate_limited"
            assert not any(line["request_id"] in client.answers for line in lines[:3])

            # Still connected, still served. The buckets are the user's, not the
            # connection's: a new socket of the same user gets no fresh burst (issue 12:
            # one token on 20 sockets got 727 acked gifts a second), another user does.
            await client.send({"type": "ping"})
            assert await client.until_type("pong") == {"type": "pong"}
            other = await RoomClient.open(url, room_id, token=fan.token)
            refused = await other.request(gift())
            assert (refused["type"], refused["code"]) == ("error", "rate_limited")
            await other.close()
            second_fan = await funded(http, "p100")
            third = await RoomClient.open(url, room_id, token=second_fan.token)
            assert (await third.request(gift()))["type"] == "ack"
            await third.close()
        finally:
            await client.close()


async def test_a_combo_burst_of_50_gifts_passes(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    _, room_id = await live_room(http)
    fan = await funded(http, "p100")
    client = await RoomClient.open(live_server.ws_url, room_id, token=fan.token)
    try:
        frames = [gift() for _ in range(50)]
        for frame in frames:
            await client.send(frame)
        answers = [await client.answer(f["request_id"]) for f in frames]
        assert [a["type"] for a in answers] == ["ack"] * 50
        await client.until_seq(50)
        assert [e["combo"] for e in gift_events(client)] == list(range(1, 51))
    finally:
        await client.close()


async def test_resume_past_the_capped_history_is_not_recovered(
    limited_server: LiveServer,
) -> None:
    async with client_of(limited_server) as http:
        _, room_id = await live_room(http)
        url = limited_server.ws_url
        for _ in range(3):  # 15 gifts, 5 per fan (the burst)
            fan = await funded(http, "p100")
            sender = await RoomClient.open(url, room_id, token=fan.token)
            for _ in range(5):
                assert (await sender.request(gift()))["type"] == "ack"
            await sender.close()
        back = await RoomClient.open(url, room_id, since=0)
        try:
            assert back.welcome["recovered"] is False and back.welcome["seq"] == 15
            await back.until_seq(15)
            assert seqs(back) == list(range(6, 16))  # the 10 history still holds
        finally:
            await back.close()


def metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


async def slow_readers_closed(http: httpx.AsyncClient) -> float:
    return metric((await http.get("/metrics")).text, "giftstream_slow_readers_closed_total")


async def flood_until_a_slow_reader_is_closed(
    http: httpx.AsyncClient, senders: list[RoomClient], before: float
) -> int:
    """Long chat lines from every sender, 50 each a round, until the server has closed
    one more slow reader than `before`; how many lines were said."""

    async def flood(client: RoomClient, n: int) -> None:
        for i in range(n):
            await client.send(chat(f"{i:04d} " + "x" * 195))
        # Frames are served in order: the pong means every line was posted.
        await client.send({"type": "ping"})
        await client.until_type("pong")

    # Bounded in time, not in rounds: on a loaded machine a round takes longer, and what
    # closes the reader is bytes piling up (or staying unsent for GS_STALLED_READER_S).
    said = 0
    async with asyncio.timeout(120):
        while await slow_readers_closed(http) == before:
            async with asyncio.TaskGroup() as tg:
                for sender in senders:
                    tg.create_task(flood(sender, 50))
            said += 50 * len(senders)
    return said


def server_side_states(server_port: int, peer_port: int) -> list[str]:
    """TCP states (/proc/net/tcp's hex codes) of the server's sockets to `peer_port`."""
    states = []
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.split(":")[1], 16) == server_port and int(
                remote.split(":")[1], 16
            ) == peer_port:
                states.append(state)
    return states


async def keep_reading(client: RoomClient) -> None:
    while True:
        await client.read()


async def test_a_reader_that_never_reads_is_closed_and_slows_no_one(
    flood_server: LiveServer,
) -> None:
    # At default settings: closed as too slow (1008) once its socket has held more than
    # 64 KiB unsent for GS_STALLED_READER_S, long before a ping would go unanswered (1011).
    server = flood_server
    async with client_of(server) as http:
        _, room_id = await live_room(http)
        url = server.ws_url
        slow = await never_reading(server, room_id)
        opts: dict[str, Any] = {"max_queue": None}
        talkers = [await sign_up(http, name=f"Talker{i}") for i in range(4)]
        senders = [await RoomClient.open(url, room_id, token=t.token, **opts) for t in talkers]
        good = await RoomClient.open(url, room_id, **opts)
        before = await slow_readers_closed(http)
        reader = asyncio.create_task(keep_reading(good))
        try:
            said = await flood_until_a_slow_reader_is_closed(http, senders, before)
            # The slow one reads again at once (within GS_SLOW_CLOSE_TIMEOUT_S, after which
            # an unread socket is reset): it finds what was queued and then 1008.
            slow_closed = asyncio.create_task(slow.closed_with())
            assert not any(sender.answers for sender in senders)  # every line was taken
            last = await fence(senders[0])
            async with asyncio.timeout(60):
                while not good.events or max(seqs(good)) < last:
                    await asyncio.sleep(0.02)
            # Everyone else received every line, once, in order.
            assert seqs(good) == list(range(1, last + 1))
            assert len(good.events) == said + 1
            assert await slow_closed == 1008
            assert len(slow.events) < said
            r = await http.get(f"/api/rooms/{room_id}")
            assert r.json()["viewers"] == 5
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            for client in (*senders, good, slow):
                await client.close()


async def test_with_compression_on_room_frames_reach_compressed_and_plain_sockets(
    compressing_server: LiveServer,
) -> None:
    # Room frames are written straight into the sockets; where permessage-deflate was
    # negotiated they are compressed for that socket, elsewhere sent as they are.
    async with client_of(compressing_server) as http:
        _, room_id = await live_room(http)
        fan = await funded(http, "p100")
        url = compressing_server.ws_url
        sender = await RoomClient.open(url, room_id, token=fan.token)
        plain = await RoomClient.open(url, room_id, compression=None)
        try:
            assert sender.conn.protocol.extensions  # deflate negotiated
            assert not plain.conn.protocol.extensions
            frames = [gift(count=3), chat("compressed " + "y" * 150)]
            answer = await sender.request(frames[0])
            assert answer == {"type": "ack", "request_id": frames[0]["request_id"], "coins": 97}
            await sender.send(frames[1])
            for client in (sender, plain):
                await client.until_seq(2)
                [event] = [e for e in client.events if e["kind"] == "chat"]
                assert event["text"] == frames[1]["text"]
                assert [e["seq"] for e in client.events] == [1, 2]
        finally:
            await sender.close()
            await plain.close()


async def test_a_reader_that_reads_nothing_at_all_is_dropped_and_its_socket_freed(
    quick_drop_server: LiveServer,
) -> None:
    server = quick_drop_server
    async with client_of(server) as http:
        _, room_id = await live_room(http)
        url = server.ws_url
        slow = await never_reading(server, room_id)
        slow_port = slow.conn.local_address[1]
        talker = await sign_up(http, name="Talker")
        sender = await RoomClient.open(url, room_id, token=talker.token, max_queue=None)

        async def open_sockets() -> float:
            return metric((await http.get("/metrics")).text, "giftstream_connections_open")

        try:
            assert await open_sockets() == 2
            await flood_until_a_slow_reader_is_closed(http, [sender], 0)
            # Its 1008 waits behind megabytes it will never read: after the timeout the
            # server drops the connection and frees what it held.
            async with asyncio.timeout(15):
                while await open_sockets() != 1:
                    await asyncio.sleep(0.1)
            # Reset, not closed: the kernel holds nothing for it (no FIN-WAIT-1 with
            # megabytes of unsent bytes).
            async with asyncio.timeout(15):
                while server_side_states(server.port, slow_port):
                    await asyncio.sleep(0.1)
            # Past the close timeout (1 s here) it reads at last: the connection was cut
            # off, its close frame never delivered. The server let go of it.
            await asyncio.sleep(3)
            async with asyncio.timeout(15):
                assert await slow.closed_with() is None
            await sender.send({"type": "ping"})
            assert await sender.until_type("pong") == {"type": "pong"}
        finally:
            await sender.close()
            await slow.close()
