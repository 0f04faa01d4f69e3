"""The WebSocket wire protocol (DESIGN section 4): client frames decoded and validated,
server frames built and encoded with orjson.

Pure: no asyncio, no Redis, no sockets. A client frame either decodes to one of
`GiftFrame`, `ChatFrame`, `PingFrame`, or raises `FrameRejected` carrying the `Refusal`
to answer with (its stable code) and the frame's `request_id` when it named a usable one.
Server frames are returned as `bytes`, the UTF-8 payload of one text frame, encoded once;
`Outgoing` carries one on its way to sockets and builds the WebSocket frame around it at
most once, so the fan-out writes the very same bytes to every viewer of a room.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
from websockets.frames import Frame, Opcode

from server.economy import MAX_CHAT_LENGTH, MAX_COMBO, Catalog, Gift
from server.errors import BadRequest, Refusal, UnknownGift

MAX_REQUEST_ID_LENGTH = 64
_REQUEST_ID = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{MAX_REQUEST_ID_LENGTH}}}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

GIFT_FIELDS = frozenset({"type", "request_id", "gift_id", "count"})
CHAT_FIELDS = frozenset({"type", "request_id", "text"})
PING_FIELDS = frozenset({"type"})


@dataclass(frozen=True, slots=True)
class GiftFrame:
    request_id: str
    gift: Gift
    count: int


@dataclass(frozen=True, slots=True)
class ChatFrame:
    request_id: str
    text: str


@dataclass(frozen=True, slots=True)
class PingFrame:
    pass


ClientFrame: TypeAlias = GiftFrame | ChatFrame | PingFrame


class FrameRejected(Exception):
    """A client frame the server will not act on: `refusal` says why (its `code` goes in
    the error frame), `request_id` is the frame's own when it named a valid one."""

    def __init__(self, refusal: Refusal, request_id: str | None = None) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.request_id = request_id


def valid_request_id(value: object) -> bool:
    return isinstance(value, str) and bool(_REQUEST_ID.fullmatch(value))


def decode_client_frame(data: str | bytes, catalog: Catalog) -> ClientFrame:
    """Decode and validate one client text frame; `FrameRejected` for anything else.

    Every field is required and no other field is allowed; numbers must be JSON integers
    (not strings, floats or booleans); the gift must be in `catalog`.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameRejected(BadRequest("a frame must be one JSON object")) from None
    if not isinstance(obj, dict):
        raise FrameRejected(BadRequest("a frame must be one JSON object"))
    raw_request_id = obj.get("request_id")
    request_id = raw_request_id if valid_request_id(raw_request_id) else None
    kind = obj.get("type")
    if kind == "gift":
        return _gift(obj, request_id, catalog)
    if kind == "chat":
        return _chat(obj, request_id)
    if kind == "ping":
        _exact_fields(obj, PING_FIELDS, request_id)
        return PingFrame()
    if not isinstance(kind, str):
        raise FrameRejected(BadRequest('a frame needs a "type": gift, chat or ping'), request_id)
    raise FrameRejected(
        BadRequest(f"unknown frame type {kind[:40]!r}: use gift, chat or ping"), request_id
    )


def _exact_fields(obj: Mapping[str, Any], allowed: frozenset[str], request_id: str | None) -> None:
    missing = allowed - obj.keys()
    if missing:
        names = ", ".join(sorted(missing))
        raise FrameRejected(BadRequest(f"{obj['type']} frame is missing: {names}"), request_id)
    extra = obj.keys() - allowed
    if extra:
        names = ", ".join(sorted(k[:40] for k in extra))
        raise FrameRejected(
            BadRequest(f"{obj['type']} frame has unknown fields: {names}"), request_id
        )


def _request_id(obj: Mapping[str, Any], request_id: str | None) -> str:
    if request_id is None:
        raise FrameRejected(
            BadRequest(
                f"request_id must be 1 to {MAX_REQUEST_ID_LENGTH} characters of "
                "letters, digits and _ . : -"
            )
        )
    return request_id


def _gift(obj: Mapping[str, Any], request_id: str | None, catalog: Catalog) -> GiftFrame:
    _exact_fields(obj, GIFT_FIELDS, request_id)
    rid = _request_id(obj, request_id)
    count = obj["count"]
    # bool is an int in Python, not in JSON terms.
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COMBO:
        raise FrameRejected(BadRequest(f"count must be a whole number from 1 to {MAX_COMBO}"), rid)
    gift_id = obj["gift_id"]
    if not isinstance(gift_id, str):
        raise FrameRejected(BadRequest("gift_id must be a string"), rid)
    gift = catalog.gifts.get(gift_id)
    if gift is None:
        raise FrameRejected(UnknownGift(f"no gift {gift_id[:40]!r} in the catalog"), rid)
    return GiftFrame(rid, gift, count)


def _chat(obj: Mapping[str, Any], request_id: str | None) -> ChatFrame:
    _exact_fields(obj, CHAT_FIELDS, request_id)
    rid = _request_id(obj, request_id)
    text = obj["text"]
    if not isinstance(text, str):
        raise FrameRejected(BadRequest("text must be a string"), rid)
    if not text.strip():
        raise FrameRejected(BadRequest("text must not be empty"), rid)
    if len(text) > MAX_CHAT_LENGTH:
        raise FrameRejected(BadRequest(f"text is longer than {MAX_CHAT_LENGTH} characters"), rid)
    if _CONTROL.search(text):
        raise FrameRejected(BadRequest("text must not contain control characters"), rid)
    return ChatFrame(rid, text)


# --- server frames -------------------------------------------------------------------


class Outgoing:
    """A server frame on its way to one socket or many: `data`, the JSON payload, and
    `wire`, the whole unmasked WebSocket text frame that carries it, built on first use
    and then shared by every socket it is written to."""

    __slots__ = ("data", "_wire")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = Frame(Opcode.TEXT, self.data).serialize(mask=False)
        return self._wire


def encode(frame: Mapping[str, Any]) -> bytes:
    return orjson.dumps(frame)


def welcome_frame(
    *,
    room: Mapping[str, Any],
    seq: int,
    viewers: int,
    top: Sequence[Mapping[str, Any]],
    you: Mapping[str, Any] | None,
    recovered: bool,
    limits: Mapping[str, int | float],
) -> bytes:
    return encode(
        {
            "type": "welcome",
            "room": room,
            "seq": seq,
            "viewers": viewers,
            "top": top,
            "you": you,
            "recovered": recovered,
            "limits": limits,
        }
    )


_EVENTS_HEAD = b'{"type":"events","events":['
_EVENTS_TAIL = b"]}"


def events_frame(events: Sequence[bytes]) -> bytes:
    """One `events` frame from room events as stored (each already a JSON object with its
    seq): spliced, not decoded and encoded again."""
    return _EVENTS_HEAD + b",".join(events) + _EVENTS_TAIL


def room_state_frame(*, viewers: int, top: Sequence[Mapping[str, Any]]) -> bytes:
    return encode({"type": "room_state", "viewers": viewers, "top": top})


def ack_frame(request_id: str, coins: int) -> bytes:
    return encode({"type": "ack", "request_id": request_id, "coins": coins})


def error_frame(code: str, message: str, request_id: str | None = None) -> bytes:
    return encode({"type": "error", "request_id": request_id, "code": code, "message": message})


PONG = encode({"type": "pong"})

# Room events as the Lua scripts build them start with their seq and name their kind
# before any text a user chose, so both can be read without decoding the event.
_SEQ = re.compile(rb'^\{"seq":(\d+)[,}]')
_KIND = b'"kind":"'


def event_seq(event: bytes) -> int:
    """The `seq` of a room event as stored; `ValueError` if it has none."""
    match = _SEQ.match(event)
    if match is not None:
        return int(match.group(1))
    seq = orjson.loads(event).get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("room event without a seq")
    return seq


def event_kind(event: bytes) -> str:
    """The `kind` of a room event as stored ("" if it names none)."""
    start = event.find(_KIND)
    if start < 0:
        return ""
    start += len(_KIND)
    end = event.find(b'"', start)
    return event[start:end].decode() if end > start else ""
