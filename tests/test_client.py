"""The project's client (`giftstream_client`): its pure parts (codec, reconnect rule,
pacing) as plain functions; its REST calls and room sessions against the real server,
with faults injected by a real TCP proxy in between."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import orjson
import pytest

from giftstream_client import calls, errors
from giftstream_client.frames import (
    Ack,
    ErrorFrame,
    Events,
    GiftRequest,
    Limits,
    SeqTracker,
    UnknownFrame,
    Welcome,
    decode,
    scan_events,
)
from giftstream_client.models import SpendingLimit
from giftstream_client.pacing import TokenGate
from giftstream_client.reconnect import Backoff, should_reconnect
from giftstream_client.rest import GiftstreamClient
from giftstream_client.room import RoomSession
from tests.accounts import funded, sign_up
from tests.live_server import LiveServer
from tests.tcp_proxy import TcpProxy

# --- the codec -----------------------------------------------------------------------


def events_frame(*events: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "events", "events": list(events)})


def test_events_are_scanned_without_decoding_and_checked_by_seq() -> None:
    scan = scan_events(events_frame(*({"seq": s, "ts": 1, "kind": "gift"} for s in (7, 8, 9))))
    assert scan is not None and (scan.count, scan.first, scan.last) == (3, 7, 9) and scan.unbroken
    # A chat line that spells a seq is escaped JSON: it cannot be mistaken for an event.
    tricky = events_frame({"seq": 10, "ts": 1, "kind": "chat", "text": '{"seq":99}'})
    scan = scan_events(tricky)
    assert scan is not None and (scan.count, scan.first, scan.last) == (1, 10, 10)
    broken = scan_events(events_frame({"seq": 3}, {"seq": 5}))
    assert broken is not None and not broken.unbroken and broken.seqs == (3, 5)
    assert scan_events(b'{"type":"ack","request_id":"a","coins":1}') is None


def test_tracker_counts_gaps_and_duplicates_and_keeps_the_resume_point() -> None:
    tracker = SeqTracker()
    tracker.welcome(10)  # a first visit starts at the room's present
    assert [tracker.accept(s) for s in (11, 12, 12, 15)] == [True, True, False, True]
    assert (tracker.since, tracker.gaps, tracker.duplicates, tracker.events) == (15, 2, 1, 3)
    tracker.welcome(40)  # a return keeps its place: the missed events follow
    assert tracker.since == 15
    scan = scan_events(events_frame(*({"seq": s} for s in range(16, 21))))
    assert scan is not None and tracker.accept_scan(scan) == 5 and tracker.since == 20
    again = scan_events(events_frame(*({"seq": s} for s in range(19, 23))))
    assert again is not None and tracker.accept_scan(again) == 2
    assert (tracker.duplicates, tracker.gaps) == (3, 2)


def test_frames_decode_to_records_and_unknown_ones_are_kept() -> None:
    welcome = decode(
        orjson.dumps(
            {
                "type": "welcome",
                "room": {"room_id": "r", "title": "t", "creator": {"user_id": "u", "name": "C"},
                         "status": "live"},
                "seq": 4, "viewers": 2, "top": [], "you": {"user_id": "v", "coins": 7},
                "recovered": False,
                "limits": {"gift_per_s": 5, "gift_burst": 9, "chat_per_s": 1, "chat_burst": 2,
                           "max_frame_bytes": 1024},
            }
        )
    )  # fmt: skip
    assert isinstance(welcome, Welcome)
    assert welcome.you is not None and welcome.you.coins == 7
    assert welcome.limits == Limits(5.0, 9, 1.0, 2, 1024, from_server=True)
    assert decode(b'{"type":"ack","request_id":"a","coins":3}') == Ack("a", 3)
    error = decode(b'{"type":"error","request_id":null,"code":"bad_request","message":"m"}')
    assert error == ErrorFrame("bad_request", "m", None)
    events = decode(events_frame({"seq": 1, "ts": 5, "kind": "gift", "gift_id": "rose"}))
    assert isinstance(events, Events) and events.events[0].gift_id == "rose"
    assert isinstance(decode(b'{"type":"news","x":1}'), UnknownFrame)
    with pytest.raises(errors.ProtocolError):
        decode(b"not json")


def test_limits_fall_back_to_the_defaults_when_the_server_names_none() -> None:
    assert Limits.from_json(None) == Limits() and not Limits().from_server
    assert "defaults" in Limits().describe()
    partial = Limits.from_json({"gift_per_s": 3, "chat_burst": -1})
    assert (partial.gift_per_s, partial.chat_burst, partial.from_server) == (3.0, 5, True)


def test_error_bodies_become_typed_errors_with_the_servers_code() -> None:
    error = calls.error_from(402, b'{"code":"insufficient_coins","message":"no"}')
    assert isinstance(error, errors.PaymentRequired) and error.code == "insufficient_coins"
    plain = calls.error_from(404, b"Not Found")
    assert isinstance(plain, errors.NotFound) and plain.code == "http_404"
    assert isinstance(calls.error_from(502, b""), errors.ServerError)


# --- the reconnect rule and pacing -----------------------------------------------------


def test_backoff_grows_with_jitter_and_starts_again_after_a_success() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0, max_failures=5, rng=random.Random(1))
    pauses = [backoff.failed() for _ in range(5)]
    for n, pause in enumerate(pauses):
        step = min(8.0, 2.0**n)
        assert pause is not None and step / 2 <= pause <= step
    assert backoff.failed() is None  # six failures in a row: give up
    backoff.succeeded()
    assert backoff.failed() is not None
    # A long-lived viewer closed a hundred times, welcomed in between, never gives up.
    viewer = Backoff(max_failures=5)
    for _ in range(100):
        assert viewer.failed() is not None
        viewer.succeeded()


def test_only_final_closes_stop_reconnecting() -> None:
    assert not should_reconnect(None)  # we closed it
    assert not should_reconnect(4401) and not should_reconnect(4404)
    assert all(should_reconnect(code) for code in (1000, 1006, 1008, 1011, 1012, 1013))


def test_gate_stays_under_the_server_limit() -> None:
    gate = TokenGate.for_gifts(Limits(gift_per_s=20.0, gift_burst=50), now=1000.0)
    sent, t = 0, 1000.0
    while t < 1010.0:
        delay = gate.delay(t)
        if delay == 0:
            sent += 1
        else:
            t += delay
    assert sent <= 20 * 10 + 50  # 10 s at the server's 20/s plus its burst


# --- REST against the real server --------------------------------------------------------


async def test_rest_calls_answer_records_and_refusals_carry_the_code(
    http: httpx.AsyncClient,
) -> None:
    api = GiftstreamClient(http=http)
    ann = await api.sign_up("Ann")
    assert [p.id for p in await api.coin_packages()][:1] == ["p100"]
    assert any(g.id == "rose" for g in await api.gifts())
    first = await api.recharge(ann, "p1000", idempotency_key="k-1")
    again = await api.recharge(ann, "p1000", idempotency_key="k-1")
    assert (first.coins, first.replayed, again.coins, again.replayed) == (1000, False, 1000, True)
    with pytest.raises(errors.Conflict) as conflict:
        await api.recharge(ann, "p500", idempotency_key="k-1")
    assert conflict.value.code == "idempotency_conflict" and conflict.value.status == 409
    with pytest.raises(errors.PaymentRequired) as declined:
        await api.recharge(ann, "p100", card_number=calls.DECLINED_CARD)
    assert declined.value.code == "payment_declined"
    assert (await api.wallet(ann)).coins == 1000
    assert (await api.set_spending_limit(ann, "daily", 500)) == SpendingLimit("daily", 500)
    page = await api.transactions(ann, limit=5)
    assert [t["kind"] for t in page.transactions] == ["recharge"]
    room_id = await api.create_room(ann, "typed")
    assert room_id in [r.room_id for r in await api.rooms()]
    detail = await api.room(room_id)
    assert (detail.status, detail.room.creator.user_id, detail.seq) == ("live", ann.user_id, 0)
    await api.end_room(ann, room_id)
    await api.end_room(ann, room_id)  # idempotent
    assert (await api.room(room_id)).status == "ended"
    with pytest.raises(errors.NotFound):
        await api.room("nope")


async def test_no_server_is_one_clear_line() -> None:
    async with GiftstreamClient("http://127.0.0.1:9", attempts=2) as api:
        with pytest.raises(errors.ServerUnreachable) as unreachable:
            await api.gifts()
    assert str(unreachable.value) == (
        "cannot reach http://127.0.0.1:9: connection refused (is the server running?)"
    )


# --- room sessions against the real server, through a proxy that fails -------------------


async def _read_all(session: RoomSession, seen: list[int]) -> None:
    async for frame in session:
        if isinstance(frame, Events):
            seen.extend(e.seq for e in frame.events)


async def test_session_resumes_with_since_and_retries_a_gift_whose_ack_was_lost(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    api = GiftstreamClient(http=http)
    creator = await sign_up(http, name="Host")
    room_id = await api.create_room(creator, "flaky link")
    fan = await funded(http, "p100")
    other = await funded(http, "p100")
    seen: list[int] = []
    async with TcpProxy(live_server.port) as proxy:
        backoff = Backoff(base_s=0.05, cap_s=0.2, max_failures=3)
        session = RoomSession(proxy.ws_url, room_id, token=fan.token, backoff=backoff)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(_read_all(session, seen))
            await session.wait_connected()
            assert (await session.gift("rose")).sends == 1
            # The link dies right after the server took the gift: its ack never arrives.
            proxy.hold_replies = True
            lost = tasks.create_task(session.gift("rose"))
            while (await api.wallet(fan)).coins != 98:
                await asyncio.sleep(0.05)
            # Meanwhile someone else gifts: those events must reach us after the cut.
            async with RoomSession(live_server.ws_url, room_id, token=other.token) as sender:
                sending = tasks.create_task(_read_all(sender, []))
                await sender.wait_connected()
                for _ in range(3):
                    await sender.gift("rose")
                await sender.close()
                await sending
            proxy.cut()
            proxy.hold_replies = False
            ack = await lost
            # Sent again with the same request_id on the next connection: answered by the
            # stored ack, not charged twice.
            assert (ack.sends, ack.coins) == (2, 98)
            # Cut again and again: each welcome is a success, so the backoff (3 failures in
            # a row at most) starts over every time and the session never gives up.
            for _ in range(5):
                connections = session.connections
                proxy.cut()
                while session.connections == connections:
                    await asyncio.sleep(0.02)
            assert (await session.gift("rose")).coins == 97
            while len(seen) < 6:  # its event too
                await asyncio.sleep(0.02)
            await session.close()
            await reader
    assert (await api.wallet(fan)).coins == 97
    assert seen == list(range(1, len(seen) + 1)) and len(seen) == 6  # each event once, in order
    assert (session.tracker.gaps, session.tracker.duplicates) == (0, 0)
    assert session.reconnects == 6 and session.welcome is not None
    # The limits it paced itself under are the ones the server's welcome named.
    assert session.limits.from_server and session.limits.gift_per_s > 0


async def test_a_final_close_ends_the_session_without_retrying(live_server: LiveServer) -> None:
    session = RoomSession(live_server.ws_url, "no-such-room", backoff=Backoff(base_s=0.01))
    async with asyncio.timeout(30):
        frames = [frame async for frame in session]
    assert frames == []
    assert session.final_code == 4404 and session.closes == {4404: 1}
    with pytest.raises(errors.RoomClosed):
        await session.gift("rose")


def test_the_gevent_twin_reads_server_frames_in_place() -> None:
    from giftstream_client.green import OP_CLOSE, OP_PING, OP_TEXT, ServerFrames

    def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
        n = len(payload)
        size = bytes([n]) if n < 126 else (bytes([126]) + n.to_bytes(2, "big") if n < 65536
                                           else bytes([127]) + n.to_bytes(8, "big"))  # fmt: skip
        return bytes([(0x80 if fin else 0) | opcode]) + size + payload

    reader = ServerFrames()
    big = b"x" * 70000
    stream = frame(OP_TEXT, b"hello") + frame(OP_TEXT, big) + frame(OP_PING, b"p")
    stream += frame(OP_TEXT, b"par", fin=False) + frame(0, b"ts") + frame(OP_CLOSE, b"\x03\xe8")
    # Byte by byte or all at once, the same messages come out.
    one_by_one = [m for i in range(len(stream)) for m in reader.feed(stream[i : i + 1])]
    assert one_by_one == ServerFrames().feed(stream) == [
        (OP_TEXT, b"hello"), (OP_TEXT, big), (OP_PING, b"p"), (OP_TEXT, b"parts"),
        (OP_CLOSE, b"\x03\xe8"),
    ]  # fmt: skip
    with pytest.raises(errors.ProtocolError):
        ServerFrames().feed(bytes([0x81, 0x81, 1, 2, 3, 4, 5]))  # masked: a client's frame
    with pytest.raises(errors.ProtocolError):
        ServerFrames(max_size=10).feed(frame(OP_TEXT, b"y" * 11))


def test_the_gevent_twin_speaks_the_same_protocol(server_url: str, live_server: LiveServer) -> None:
    """The socket the Locust users use: welcomed, gifts acked, events scanned by seq,
    refusals closed with the same codes. gevent runs here without monkey-patching."""
    from giftstream_client.green import GreenRoomConnection
    from giftstream_client.room import room_url

    def post(path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = httpx.post(server_url + path, json=body, headers=headers)
        assert r.status_code < 300, r.text
        answer: dict[str, Any] = r.json()
        return answer

    birth = {"birthdate": "1990-01-01", "region": "US"}
    host = post("/api/users", {"name": "H", **birth})
    fan = post("/api/users", {"name": "F", **birth})
    post("/api/wallet/recharge", {"package_id": "p100", "card_number": calls.APPROVED_CARD,
                                  "idempotency_key": calls.new_key()}, fan["token"])  # fmt: skip
    room_id = post("/api/rooms", {"title": "green"}, host["token"])["room_id"]
    conn = GreenRoomConnection.open(room_url(live_server.ws_url, room_id, token=fan["token"]))
    assert conn.welcome is not None and conn.welcome.you is not None
    assert conn.welcome.you.coins == 100
    tracker = SeqTracker()
    tracker.welcome(conn.welcome.seq)
    for _ in range(3):
        conn.send(GiftRequest("rose"))
    acks = 0
    while acks < 3 or tracker.events < 3:
        data = conn.recv()
        scan = scan_events(data)
        if scan is not None:
            tracker.accept_scan(scan)
        elif isinstance(decode(data), Ack):
            acks += 1
    assert (tracker.since, tracker.gaps, tracker.duplicates) == (3, 0, 0)
    conn.close()
    assert conn.close_code == 1000
    with pytest.raises(errors.RoomClosed) as closed:
        GreenRoomConnection.open(room_url(live_server.ws_url, "no-such-room"))
    assert closed.value.code == 4404
