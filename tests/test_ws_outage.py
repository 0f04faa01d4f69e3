"""Redis goes away under open sockets: gifts and chat answer `unavailable` (no close, no
crash), new connections are told to come back (1013), and once Redis is back the same
sockets are served again and live events flow again through the hub."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.embedded import EmbeddedRedis
from tests.accounts import funded
from tests.live_server import LiveServer
from tests.room_client import RoomClient, chat, close_code_of, gift, live_room


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


async def test_open_sockets_survive_a_redis_outage(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    server = LiveServer(own_redis.url, log_dir=tmp_path / "logs").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            _, room_id = await live_room(http)
            fan = await funded(http, "p100")
            sender = await RoomClient.open(server.ws_url, room_id, token=fan.token)
            watcher = await RoomClient.open(server.ws_url, room_id)
            assert (await sender.request(gift()))["coins"] == 99
            await watcher.until_seq(1)

            own_redis.stop()
            for frame in (gift(), chat("anyone?")):
                answer = await sender.request(frame)
                assert (answer["type"], answer["code"]) == ("error", "unavailable")
            assert await close_code_of(server.ws_url, f"/ws/rooms/{room_id}") == 1013
            await sender.send({"type": "ping"})
            assert await sender.until_type("pong") == {"type": "pong"}

            own_redis.start()  # same port, same folder: the append-only file is replayed
            async with asyncio.timeout(30):
                while True:
                    answer = await sender.request(gift())
                    if answer["type"] == "ack":
                        break
                    assert answer["code"] == "unavailable"
                    await asyncio.sleep(0.2)
            assert answer["coins"] == 98
            # The hub subscribed again: the watcher sees the new gift, and nothing twice.
            await watcher.until_seq(2)
            assert [e["seq"] for e in watcher.events] == [1, 2]
            await sender.close()
            await watcher.close()
    finally:
        server.stop()
