"""Two server processes on one Redis: a gift sent through either reaches every viewer on
both, exactly once each, and presence sums the viewers of both."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.accounts import funded
from tests.live_server import LiveServer
from tests.room_client import RoomClient, fence, gift, gift_events, live_room, seqs


@pytest.fixture(scope="module")
def second_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(redis_url, log_dir=tmp_path_factory.mktemp("second")).start()
    yield server
    server.stop()


async def test_gifts_through_either_process_reach_viewers_on_both_exactly_once(
    http: httpx.AsyncClient, live_server: LiveServer, second_server: LiveServer
) -> None:
    creator, room_id = await live_room(http)
    fan_a = await funded(http, "p1000", name="OnA")
    fan_b = await funded(http, "p1000", name="OnB")
    a, b = live_server.ws_url, second_server.ws_url
    sender_a = await RoomClient.open(a, room_id, token=fan_a.token)
    sender_b = await RoomClient.open(b, room_id, token=fan_b.token)
    watchers = [await RoomClient.open(url, room_id) for url in (a, a, b, b, b)]
    everyone = [sender_a, sender_b, *watchers]
    try:
        for i in range(10):
            assert (await sender_a.request(gift("rose", i + 1)))["type"] == "ack"
            assert (await sender_b.request(gift("finger_heart", 1)))["type"] == "ack"
        last = max(await fence(sender_a), await fence(sender_b))
        for viewer in everyone:
            await viewer.until_seq(last)
            assert seqs(viewer) == list(range(1, last + 1))  # each once, in order
            gifts = gift_events(viewer)
            assert [g["count"] for g in gifts if g["from"]["name"] == "OnA"] == list(range(1, 11))
            assert len([g for g in gifts if g["from"]["name"] == "OnB"]) == 10
        r = await http.get("/api/wallet", headers=creator.headers)
        assert r.json()["diamonds"] == sum(range(1, 11)) + 10 * 5
        # Viewers are counted on both processes, through either one.
        for url in (live_server.url, second_server.url):
            async with httpx.AsyncClient(base_url=url) as client:
                r = await client.get(f"/api/rooms/{room_id}")
                assert r.json()["viewers"] == len(everyone)
        # A viewer leaving one process is seen in the room_state of the other.
        await watchers[0].close()
        watcher_b = watchers[2]
        async with asyncio.timeout(15):
            while not any(
                f["type"] == "room_state" and f["viewers"] == len(everyone) - 1
                for f in watcher_b.frames
            ):
                await watcher_b.read()
    finally:
        for viewer in everyone:
            await viewer.close()
