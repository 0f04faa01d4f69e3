"""A live room end to end, on a real server process with real WebSocket clients: gifts and
chat reach every viewer, money moves exactly, a double spend is impossible, a resumed
viewer misses nothing, and the end of a live reaches everyone."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.accounts import Account, funded, recharge, sign_up
from tests.live_server import LiveServer
from tests.room_client import (
    RoomClient,
    chat,
    close_code_of,
    fence,
    gift,
    gift_events,
    live_room,
    seqs,
)
from tests.test_metrics import samples


async def wallet(http: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    r = await http.get("/api/wallet", headers=account.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_gift_reaches_every_viewer_and_moves_the_money(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    creator, room_id = await live_room(http)
    fan = await funded(http, "p1000", name="Fan")
    url = live_server.ws_url
    sender = await RoomClient.open(url, room_id, token=fan.token)
    anonymous = [await RoomClient.open(url, room_id) for _ in range(2)]
    other = await RoomClient.open(url, room_id, token=(await sign_up(http, name="Other")).token)
    everyone = [sender, *anonymous, other]
    try:
        assert sender.welcome["you"] == {"user_id": fan.user_id, "coins": 1000}
        assert anonymous[0].welcome["you"] is None
        assert sender.welcome["room"] == {
            "room_id": room_id,
            "title": "a live",
            "creator": {"user_id": creator.user_id, "name": "Creator"},
            "status": "live",
        }
        assert sender.welcome["seq"] == 0 and sender.welcome["recovered"] is False
        # The limits to keep to, from the server (its defaults here).
        assert sender.welcome["limits"] == {
            "gift_per_s": 20,
            "gift_burst": 50,
            "chat_per_s": 2,
            "chat_burst": 5,
            "max_frame_bytes": 65536,
        }

        frame = gift("doughnut", 3)  # 30 coins each
        ack = await sender.request(frame)
        assert ack == {"type": "ack", "request_id": frame["request_id"], "coins": 910}
        for viewer in everyone:
            await viewer.until_seq(1)
            [event] = viewer.events
            assert event["seq"] == 1 and event["kind"] == "gift"
            assert event["from"] == {"user_id": fan.user_id, "name": "Fan"}
            assert (event["gift_id"], event["count"], event["coins"]) == ("doughnut", 3, 90)
            assert event["combo"] == 3 and isinstance(event["ts"], int)
        assert (await wallet(http, fan))["coins"] == 910
        assert (await wallet(http, creator))["diamonds"] == 90

        # A second one in a row: the combo counts on.
        ack = await sender.request(gift("doughnut", 2))
        assert ack["coins"] == 850
        for viewer in everyone:
            await viewer.until_seq(2)
            assert viewer.events[-1]["combo"] == 5
        assert (await wallet(http, creator))["diamonds"] == 150

        r = await http.get(f"/api/rooms/{room_id}")
        body = r.json()
        assert body["totals"]["gift_coins"] == 150 and body["seq"] == 2
        assert body["top"] == [{"user_id": fan.user_id, "name": "Fan", "coins": 150}]
        # The top gifters reach every viewer as a room_state.
        watcher = anonymous[0]
        while not any(
            f["type"] == "room_state" and f["top"] == body["top"] for f in watcher.frames
        ):
            await watcher.read()
    finally:
        for viewer in everyone:
            await viewer.close()


async def test_chat_reaches_every_viewer(http: httpx.AsyncClient, live_server: LiveServer) -> None:
    _, room_id = await live_room(http)
    talker = await sign_up(http, name="Talker")
    a = await RoomClient.open(live_server.ws_url, room_id, token=talker.token)
    b = await RoomClient.open(live_server.ws_url, room_id)
    try:
        await a.send(chat("hello, room ❤"))
        for viewer in (a, b):
            await viewer.until_seq(1)
            [event] = viewer.events
            assert event["kind"] == "chat" and event["text"] == "hello, room ❤"
            assert event["from"] == {"user_id": talker.user_id, "name": "Talker"}
    finally:
        await a.close()
        await b.close()


async def test_anonymous_viewers_watch_only(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    _, room_id = await live_room(http)
    viewer = await RoomClient.open(live_server.ws_url, room_id)
    try:
        for frame in (gift(), chat("hi")):
            answer = await viewer.request(frame)
            assert answer["type"] == "error" and answer["code"] == "unauthorized"
    finally:
        await viewer.close()


async def test_a_creator_cannot_gift_their_own_live(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    creator, room_id = await live_room(http)
    assert (await recharge(http, creator, "p100")).status_code == 200
    client = await RoomClient.open(live_server.ws_url, room_id, token=creator.token)
    try:
        answer = await client.request(gift())
        assert (answer["type"], answer["code"]) == ("error", "forbidden")
        assert (await wallet(http, creator))["coins"] == 100
        await client.send(chat("welcome, everyone"))  # but may chat
        await client.until_seq(1)
    finally:
        await client.close()


async def test_200_concurrent_gifts_from_a_wallet_that_affords_37(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    creator, room_id = await live_room(http)
    fan = await funded(http, "p1000")  # 1,000 coins; 27 coins a gift: 37 fit, 1 coin left
    url = live_server.ws_url
    senders = [await RoomClient.open(url, room_id, token=fan.token) for _ in range(5)]
    watcher = await RoomClient.open(url, room_id)
    try:
        frames = [[gift("rose", 27) for _ in range(40)] for _ in senders]

        async def storm(client: RoomClient, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for frame in batch:
                await client.send(frame)
            return [await client.answer(frame["request_id"]) for frame in batch]

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(storm(c, b)) for c, b in zip(senders, frames, strict=True)]
        answers = [a for task in tasks for a in task.result()]
        assert len(answers) == 200
        acks = [a for a in answers if a["type"] == "ack"]
        refusals = [a for a in answers if a["type"] == "error"]
        assert len(acks) == 37
        assert {r["code"] for r in refusals} == {"insufficient_coins"}
        # Each ack carries a distinct balance: 37 debits in some order, 1 coin left.
        assert sorted(a["coins"] for a in acks) == [1 + 27 * i for i in range(37)]
        assert (await wallet(http, fan))["coins"] == 1
        last = await fence(senders[0])
        await watcher.until_seq(last)
        # Credited after the acks (steps 2-4 follow the ack): by the time all are shown.
        assert (await wallet(http, creator))["diamonds"] == 999
        assert len(gift_events(watcher)) == 37
        assert seqs(watcher) == list(range(1, last + 1))
    finally:
        for client in (*senders, watcher):
            await client.close()


async def test_a_request_id_on_two_connections_is_charged_and_shown_once(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    creator, room_id = await live_room(http)
    fan = await funded(http, "p100")
    url = live_server.ws_url
    a = await RoomClient.open(url, room_id, token=fan.token)
    b = await RoomClient.open(url, room_id, token=fan.token)
    watcher = await RoomClient.open(url, room_id)
    try:
        frame = gift("finger_heart", 2)  # 10 coins
        await asyncio.gather(a.send(frame), b.send(frame))
        first, second = await a.answer(frame["request_id"]), await b.answer(frame["request_id"])
        assert first == second == {"type": "ack", "request_id": frame["request_id"], "coins": 90}
        # A retry later, on a third connection, is still the same gift.
        c = await RoomClient.open(url, room_id, token=fan.token)
        assert (await c.request(frame))["coins"] == 90
        await c.close()
        # The same request_id for another gift is refused, not charged.
        other = {**frame, "count": 3}
        assert (await a.request(other))["code"] == "bad_request"
        assert (await wallet(http, fan))["coins"] == 90
        assert (await wallet(http, creator))["diamonds"] == 10
        await watcher.until_seq(await fence(a))
        assert len(gift_events(watcher)) == 1
    finally:
        for client in (a, b, watcher):
            await client.close()


async def test_resume_with_since_gets_the_missed_events_first_in_order_once(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    _, room_id = await live_room(http)
    fan = await funded(http, "p1000")
    url = live_server.ws_url
    sender = await RoomClient.open(url, room_id, token=fan.token)
    viewer = await RoomClient.open(url, room_id)
    try:
        for _ in range(3):
            await sender.request(gift())
        await viewer.until_seq(3)
        seen = max(seqs(viewer))
        await viewer.close()
        for i in range(4):
            await sender.request(gift("rose", i + 1))
        await sender.send(chat("while you were away"))
        missed_up_to = await fence(sender)

        back = await RoomClient.open(url, room_id, since=seen)
        assert back.welcome["recovered"] is True
        assert back.welcome["seq"] >= missed_up_to
        await sender.request(gift("heart_me"))
        last = await fence(sender)
        await back.until_seq(last)
        assert seqs(back) == list(range(seen + 1, last + 1))
        assert [e["count"] for e in gift_events(back)[:4]] == [1, 2, 3, 4]
        assert gift_events(back)[-1]["gift_id"] == "heart_me"
        # The missed events come first, right after the welcome.
        assert back.frames[0]["type"] == "events"
        assert back.frames[0]["events"][0]["seq"] == seen + 1
        await back.close()

        # since = the latest seq: nothing missed; since from the future: not recovered.
        same = await RoomClient.open(url, room_id, since=last)
        assert same.welcome["recovered"] is True and same.welcome["seq"] == last
        await same.close()
        ahead = await RoomClient.open(url, room_id, since=last + 100)
        assert ahead.welcome["recovered"] is False
        await ahead.close()
    finally:
        await sender.close()


async def test_the_end_of_a_live_reaches_everyone_and_refuses_new_gifts(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    creator, room_id = await live_room(http)
    fan = await funded(http, "p100")
    url = live_server.ws_url
    sender = await RoomClient.open(url, room_id, token=fan.token)
    watchers = [await RoomClient.open(url, room_id) for _ in range(2)]
    try:
        assert (await sender.request(gift()))["type"] == "ack"
        r = await http.post(f"/api/rooms/{room_id}/end", headers=fan.headers)
        assert r.status_code == 403
        r = await http.post(f"/api/rooms/{room_id}/end", headers=creator.headers)
        assert r.status_code == 200
        for client in (sender, *watchers):
            await client.until_seq(2)
            assert client.events[-1]["kind"] == "room_ended"
        refused = await sender.request(gift())
        assert refused["type"] == "error" and refused["code"] == "room_not_live"
        refused = await sender.request(chat("anyone?"))
        assert refused["type"] == "error" and refused["code"] == "room_not_live"
        assert (await wallet(http, fan))["coins"] == 99
        assert await close_code_of(url, f"/ws/rooms/{room_id}") == 4404
        listed = (await http.get("/api/rooms")).json()["rooms"]
        assert room_id not in {room["room_id"] for room in listed}
    finally:
        for client in (sender, *watchers):
            await client.close()


async def test_rooms_over_rest_count_the_viewers(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    _, room_id = await live_room(http)
    viewers = [await RoomClient.open(live_server.ws_url, room_id) for _ in range(3)]

    async def listed_viewers() -> int | None:
        for room in (await http.get("/api/rooms")).json()["rooms"]:
            if room["room_id"] == room_id:
                return int(room["viewers"])
        return None

    try:
        # Each viewer is counted before its welcome.
        assert await listed_viewers() == 3
        assert (await http.get(f"/api/rooms/{room_id}")).json()["viewers"] == 3
        assert viewers[-1].welcome["viewers"] == 3
        await viewers.pop().close()
        async with asyncio.timeout(15):
            while await listed_viewers() != 2:
                await asyncio.sleep(0.05)
    finally:
        for viewer in viewers:
            await viewer.close()


async def test_ping_pong(http: httpx.AsyncClient, live_server: LiveServer) -> None:
    _, room_id = await live_room(http)
    viewer = await RoomClient.open(live_server.ws_url, room_id)
    try:
        await viewer.send({"type": "ping"})
        assert await viewer.until_type("pong") == {"type": "pong"}
    finally:
        await viewer.close()


async def test_the_server_writes_room_frames_straight_into_the_sockets(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    # `python -m server` runs uvicorn's websockets-sansio protocol, whose sockets the fan-out
    # writes to directly; were that lost (another uvicorn), the queued writer would serve
    # and this says so.
    def accepted(text: str, writer: str) -> float:
        return samples(text).get(f"giftstream_sockets_accepted_total[('writer', '{writer}')]", 0)

    before = (await http.get("/metrics")).text
    _, room_id = await live_room(http)
    viewer = await RoomClient.open(live_server.ws_url, room_id)
    try:
        await viewer.send({"type": "ping"})
        await viewer.until_type("pong")
    finally:
        await viewer.close()
    after = (await http.get("/metrics")).text
    assert accepted(after, "direct") - accepted(before, "direct") == 1
    assert accepted(after, "queued") == accepted(before, "queued") == 0
