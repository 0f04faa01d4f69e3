"""Bad input over a real socket: every bad frame gets an error frame with its stable code
and the connection keeps working (an oversized one closes with 1009); nothing is charged
for a refused gift; bad tokens close with 4401, unknown rooms with 4404."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from server.auth import issue_token
from tests.accounts import funded, sign_up
from tests.live_server import TEST_SECRET, LiveServer
from tests.room_client import RoomClient, chat, close_code_of, gift, live_room

BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("not json", "bad_request"),
    ("{", "bad_request"),
    ("[1, 2]", "bad_request"),
    ('"gift"', "bad_request"),
    ("{}", "bad_request"),
    ('{"type": "dance"}', "bad_request"),
    ('{"type": "gift", "request_id": "x1", "gift_id": "rose"}', "bad_request"),
    (
        '{"type": "gift", "request_id": "x2", "gift_id": "rose", "count": 1, "to": "me"}',
        "bad_request",
    ),
    ('{"type": "gift", "request_id": "x3", "gift_id": "rose", "count": 0}', "bad_request"),
    ('{"type": "gift", "request_id": "x4", "gift_id": "rose", "count": 100}', "bad_request"),
    ('{"type": "gift", "request_id": "x5", "gift_id": "rose", "count": -1}', "bad_request"),
    ('{"type": "gift", "request_id": "x6", "gift_id": "rose", "count": "5"}', "bad_request"),
    ('{"type": "gift", "request_id": "x7", "gift_id": "rose", "count": 2.5}', "bad_request"),
    ('{"type": "gift", "request_id": "x8", "gift_id": 12, "count": 1}', "bad_request"),
    ('{"type": "gift", "request_id": "x9", "gift_id": "unicorn", "count": 1}', "unknown_gift"),
    ('{"type": "gift", "request_id": 9, "gift_id": "rose", "count": 1}', "bad_request"),
    ('{"type": "chat", "request_id": "c1", "text": ""}', "bad_request"),
    ('{"type": "chat", "request_id": "c2", "text": "' + "x" * 201 + '"}', "bad_request"),
    ('{"type": "chat", "request_id": "c3", "text": 5}', "bad_request"),
    ('{"type": "chat", "request_id": "c4"}', "bad_request"),
    ('{"type": "ping", "please": true}', "bad_request"),
    (b'{"type": "ping"}', "bad_request"),  # a binary frame
    (b"\x00\xff", "bad_request"),
    (orjson.dumps(chat("y" * 60_000)).decode(), "bad_request"),  # big, under the limit
]


async def test_each_bad_frame_gets_an_error_and_the_connection_keeps_working(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    creator, room_id = await live_room(http)
    fan = await funded(http, "p100")
    client = await RoomClient.open(live_server.ws_url, room_id, token=fan.token)
    try:
        for data, code in BAD_FRAMES:
            await client.send(data)
            frame = await client.read()
            assert frame["type"] == "error", (data, frame)
            assert frame["code"] == code, (data, frame)
            assert isinstance(frame["message"], str) and frame["message"]
        # The request_id comes back when the frame named a valid one.
        assert client.answers["x9"][0]["code"] == "unknown_gift"
        assert client.answers[None]
        # Nothing was charged, and the connection still serves.
        assert (await http.get("/api/wallet", headers=fan.headers)).json()["coins"] == 100
        await client.send({"type": "ping"})
        assert (await client.read()) == {"type": "pong"}
        assert (await client.request(gift()))["coins"] == 99
        await client.until_seq(1)  # credited before it is shown (steps 2-4 follow the ack)
        assert (await http.get("/api/wallet", headers=creator.headers)).json()["diamonds"] == 1
    finally:
        await client.close()


async def test_an_oversized_frame_closes_with_1009(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    _, room_id = await live_room(http)
    fan = await funded(http, "p100")
    client = await RoomClient.open(live_server.ws_url, room_id, token=fan.token)
    await client.send(orjson.dumps(chat("z" * 70_000)).decode())  # over 64 KiB
    assert await client.closed_with() == 1009
    assert (await http.get("/api/wallet", headers=fan.headers)).json()["coins"] == 100
    # Others are not affected.
    again = await RoomClient.open(live_server.ws_url, room_id, token=fan.token)
    assert (await again.request(gift()))["type"] == "ack"
    await again.close()


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        issue_token("u0123456789abcdef", secret="not-the-server-secret-0123456789", ttl_s=600),
        issue_token("u0123456789abcdef", secret=TEST_SECRET, ttl_s=60, now=time.time() - 3600),
        issue_token("unosuchuser", secret=TEST_SECRET, ttl_s=600),  # valid, for nobody
    ],
    ids=["garbage", "forged", "expired", "no-such-user"],
)
async def test_a_bad_token_closes_with_4401(
    token: str, http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    _, room_id = await live_room(http)
    assert await close_code_of(live_server.ws_url, f"/ws/rooms/{room_id}?token={token}") == 4401


async def test_an_expired_token_of_a_real_user_closes_with_4401(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    _, room_id = await live_room(http)
    fan = await sign_up(http)
    expired = issue_token(fan.user_id, secret=TEST_SECRET, ttl_s=60, now=time.time() - 3600)
    path = f"/ws/rooms/{room_id}?token={expired}"
    assert await close_code_of(live_server.ws_url, path) == 4401


@pytest.mark.parametrize("room_id", ["nosuchroom", "UPPER", "x" * 40, "%2e%2e"])
async def test_an_unknown_room_closes_with_4404(room_id: str, live_server: LiveServer) -> None:
    assert await close_code_of(live_server.ws_url, f"/ws/rooms/{room_id}") == 4404
