"""The wire protocol as plain functions: every client frame decoded or refused with its
stable code; server frames encoded as DESIGN section 4 spells them; token buckets."""

from __future__ import annotations

import typing
from typing import Any

import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from server.contract import ErrorFrame
from server.economy import MAX_CHAT_LENGTH, Catalog
from server.errors import REFUSALS
from server.protocol import (
    PONG,
    ChatFrame,
    FrameRejected,
    GiftFrame,
    Outgoing,
    PingFrame,
    ack_frame,
    decode_client_frame,
    error_frame,
    event_kind,
    event_seq,
    events_frame,
    room_state_frame,
    welcome_frame,
)


def refused(data: str | bytes, catalog: Catalog) -> tuple[str, str | None]:
    with pytest.raises(FrameRejected) as info:
        decode_client_frame(data, catalog)
    return info.value.refusal.code, info.value.request_id


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def test_valid_frames_decode(catalog: Catalog) -> None:
    frame = decode_client_frame(
        dumps({"type": "gift", "request_id": "r-1", "gift_id": "rose", "count": 5}), catalog
    )
    assert frame == GiftFrame("r-1", catalog.gifts["rose"], 5)
    frame = decode_client_frame(dumps({"type": "chat", "request_id": "c:1", "text": "hi"}), catalog)
    assert frame == ChatFrame("c:1", "hi")
    assert decode_client_frame('{"type":"ping"}', catalog) == PingFrame()
    assert decode_client_frame(b'{"type":"ping"}', catalog) == PingFrame()
    big = "é" * MAX_CHAT_LENGTH
    assert decode_client_frame(dumps(chat_frame(big)), catalog) == ChatFrame("c", big)


def chat_frame(text: object) -> dict[str, Any]:
    return {"type": "chat", "request_id": "c", "text": text}


def gift_frame(**changes: object) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "gift", "request_id": "g", "gift_id": "rose", "count": 1}
    frame.update(changes)
    return frame


@pytest.mark.parametrize(
    "data",
    [
        "",
        "{",
        "nonsense",
        "[]",
        '"gift"',
        "42",
        "null",
        '{"type": "gift", "count": 1e999}',
        '{"type":"gift","request_id":"g","gift_id":"rose","count":100000000000000000000000}',
    ],
)
def test_not_one_json_object_is_bad_request(data: str, catalog: Catalog) -> None:
    assert refused(data, catalog)[0] == "bad_request"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({}, "bad_request"),
        ({"type": None}, "bad_request"),
        ({"type": 7}, "bad_request"),
        ({"type": "dance"}, "bad_request"),
        ({"type": "GIFT"}, "bad_request"),
        ({"type": "ping", "extra": 1}, "bad_request"),
        ({k: v for k, v in gift_frame().items() if k != "count"}, "bad_request"),
        ({k: v for k, v in gift_frame().items() if k != "gift_id"}, "bad_request"),
        ({k: v for k, v in gift_frame().items() if k != "request_id"}, "bad_request"),
        (gift_frame(extra=True), "bad_request"),
        (gift_frame(count=0), "bad_request"),
        (gift_frame(count=100), "bad_request"),
        (gift_frame(count=-1), "bad_request"),
        (gift_frame(count="5"), "bad_request"),
        (gift_frame(count=5.0), "bad_request"),
        (gift_frame(count=True), "bad_request"),
        (gift_frame(count=None), "bad_request"),
        (gift_frame(gift_id=5), "bad_request"),
        (gift_frame(gift_id=None), "bad_request"),
        (gift_frame(gift_id="unicorn"), "unknown_gift"),
        (gift_frame(gift_id=""), "unknown_gift"),
        (gift_frame(request_id=""), "bad_request"),
        (gift_frame(request_id=7), "bad_request"),
        (gift_frame(request_id="x" * 65), "bad_request"),
        (gift_frame(request_id="has space"), "bad_request"),
        (chat_frame(""), "bad_request"),
        (chat_frame("   "), "bad_request"),
        (chat_frame("x" * (MAX_CHAT_LENGTH + 1)), "bad_request"),
        (chat_frame(5), "bad_request"),
        (chat_frame(None), "bad_request"),
        (chat_frame("bell\x07"), "bad_request"),
        ({"type": "chat", "request_id": "c"}, "bad_request"),
        ({**chat_frame("hi"), "to": "someone"}, "bad_request"),
    ],
)
def test_bad_frames_are_refused_with_a_stable_code(
    frame: dict[str, Any], code: str, catalog: Catalog
) -> None:
    assert refused(dumps(frame), catalog)[0] == code


def test_a_refusal_names_the_frames_request_id_when_it_is_valid(catalog: Catalog) -> None:
    assert refused(dumps(gift_frame(count=0, request_id="mine")), catalog) == (
        "bad_request",
        "mine",
    )
    assert refused(dumps(gift_frame(gift_id="unicorn", request_id="u1")), catalog) == (
        "unknown_gift",
        "u1",
    )
    assert refused(dumps(gift_frame(request_id="bad id")), catalog) == ("bad_request", None)
    assert refused("[]", catalog) == ("bad_request", None)


def test_server_frames_are_json_as_designed() -> None:
    room = {"room_id": "r1", "title": "t", "creator": {"user_id": "u", "name": "n"}}
    limits = {"gift_per_s": 20, "gift_burst": 50, "chat_per_s": 2.5, "chat_burst": 5}
    assert orjson.loads(
        welcome_frame(room=room, seq=4, viewers=2, top=[], you=None, recovered=False, limits=limits)
    ) == {
        "type": "welcome",
        "room": room,
        "seq": 4,
        "viewers": 2,
        "top": [],
        "you": None,
        "recovered": False,
        "limits": limits,
    }
    assert orjson.loads(ack_frame("r", 97)) == {"type": "ack", "request_id": "r", "coins": 97}
    assert orjson.loads(error_frame("rate_limited", "slow down", "r")) == {
        "type": "error",
        "request_id": "r",
        "code": "rate_limited",
        "message": "slow down",
    }
    assert orjson.loads(error_frame("bad_request", "no")) == {
        "type": "error",
        "request_id": None,
        "code": "bad_request",
        "message": "no",
    }
    top = [{"user_id": "u", "name": "n", "coins": 3}]
    assert orjson.loads(room_state_frame(viewers=3, top=top)) == {
        "type": "room_state",
        "viewers": 3,
        "top": top,
    }
    assert orjson.loads(PONG) == {"type": "pong"}


def test_events_frame_splices_stored_events_without_decoding_them() -> None:
    stored = [
        b'{"seq":1,"ts":5,"kind":"chat","from":{"user_id":"u","name":"n"},"text":"\\"kind\\":1"}',
        b'{"seq":2,"ts":6,"kind":"room_ended"}',
    ]
    frame = orjson.loads(events_frame(stored))
    assert frame == {"type": "events", "events": [orjson.loads(e) for e in stored]}
    assert [event_seq(e) for e in stored] == [1, 2]
    assert [event_kind(e) for e in stored] == ["chat", "room_ended"]
    # Not in the stored layout: decoded the slow way.
    assert event_seq(b'{"kind":"chat","seq":12}') == 12
    with pytest.raises(ValueError):
        event_seq(b'{"kind":"chat"}')


def test_an_outgoing_frame_is_framed_once_for_every_socket() -> None:
    for size in (5, 200, 70_000):  # each length encoding of a WebSocket frame header
        out = Outgoing(b"x" * size)
        wire = out.wire
        assert wire is out.wire
        reader = StreamReader()
        reader.feed_data(wire)
        parser = Frame.parse(reader.read_exact, mask=False)
        with pytest.raises(StopIteration) as parsed:
            next(parser)
        frame = parsed.value.value
        assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, out.data)
        assert not reader.buffer  # nothing after the frame


@pytest.mark.parametrize(
    "text", ["a\nb", "nul\x00", "\u202eevil", "zero\u200bwidth", "line\u2028sep", "tab\there"]
)
def test_chat_text_with_control_characters_is_refused(text: str, catalog: Catalog) -> None:
    assert refused(dumps(chat_frame(text)), catalog) == ("bad_request", "c")


def test_chat_text_in_any_script_with_emoji_is_served(catalog: Catalog) -> None:
    for text in ["こんにちは", "مرحبا", "👩\u200d👩\u200d👧 family", "🩷🌹 x12", "a\u00a0b"]:
        assert decode_client_frame(dumps(chat_frame(text)), catalog) == ChatFrame("c", text)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("[]", "a frame must be one JSON object"),
        ("{}", 'a frame needs a "type": gift, chat or ping'),
        ({"type": "dance"}, "unknown frame type 'dance': use gift, chat or ping"),
        ({k: v for k, v in gift_frame().items() if k != "count"}, "gift frame is missing: count"),
        (gift_frame(to="x"), "gift frame has unknown fields: to"),
        (gift_frame(count=100), "count must be a whole number from 1 to 99"),
        (gift_frame(gift_id=5), "gift_id must be a string"),
        (gift_frame(gift_id="unicorn"), "no gift 'unicorn' in the catalog"),
        (
            gift_frame(request_id="a b"),
            "request_id must be 1 to 64 characters of letters, digits and _ . : -",
        ),
        (chat_frame(""), "text must not be empty"),
        (chat_frame(5), "text must be a string"),
        (chat_frame("x" * 201), "text is longer than 200 characters"),
        (chat_frame("a\u202e"), "text must not contain control characters"),
    ],
)
def test_refusals_keep_their_messages(frame: Any, message: str, catalog: Catalog) -> None:
    with pytest.raises(FrameRejected) as info:
        decode_client_frame(frame if isinstance(frame, str) else dumps(frame), catalog)
    assert info.value.refusal.message == message


def test_error_frame_codes_are_the_contracts() -> None:
    # The published frame's codes (Annotated[Literal[...], Meta]) are the ones ws sends.
    hints = typing.get_type_hints(ErrorFrame, include_extras=True)
    codes = typing.get_args(typing.get_args(hints["code"])[0])
    assert set(codes) == {refusal.wire for refusal in REFUSALS.values()}
