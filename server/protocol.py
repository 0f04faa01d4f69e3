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
from typing import Any, TypeAlias

import msgspec
import orjson
from websockets.frames import Frame, Opcode

from server import contract
from server.contract import MAX_REQUEST_ID_LENGTH, ChatCommand, GiftCommand
from server.economy import MAX_CHAT_LENGTH, MAX_COMBO, Catalog, Gift, has_control_characters
from server.errors import BadRequest, Refusal, UnknownGift

_REQUEST_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_REQUEST_ID_LENGTH}}}")
# The frames a client may send, as the published contract defines them (server.contract).
_CLIENT_FRAME = msgspec.json.Decoder(contract.ClientFrame)
_NOT_AN_OBJECT = "a frame must be one JSON object"
_NO_TYPE = 'a frame needs a "type": gift, chat or ping'
_FRAME_TYPES = frozenset({"gift", "chat", "ping"})


# What a decoded frame asks for (frozen Structs: cheaper to make than dataclasses, and
# a gift frame is made once per gift).
class GiftFrame(msgspec.Struct, frozen=True):
    request_id: str
    gift: Gift
    count: int


class ChatFrame(msgspec.Struct, frozen=True):
    request_id: str
    text: str


class PingFrame(msgspec.Struct, frozen=True):
    pass


ClientFrame: TypeAlias = GiftFrame | ChatFrame | PingFrame
_PING = PingFrame()


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

    The frame must be one of `server.contract.ClientFrame`: every field is required and
    no other field is allowed; numbers must be JSON integers (not strings, floats or
    booleans) within their ranges; the gift must be in `catalog`; chat text must not be
    blank or hold control characters (`economy.has_control_characters`).
    """
    try:
        frame = _CLIENT_FRAME.decode(data)
    except msgspec.ValidationError as exc:
        raise _rejected(exc, data) from None
    except msgspec.DecodeError:
        raise FrameRejected(BadRequest(_NOT_AN_OBJECT)) from None
    if type(frame) is GiftCommand:
        gift = catalog.gifts.get(frame.gift_id)
        if gift is None:
            raise FrameRejected(
                UnknownGift(f"no gift {frame.gift_id[:40]!r} in the catalog"), frame.request_id
            )
        return GiftFrame(frame.request_id, gift, frame.count)
    if type(frame) is ChatCommand:
        text = frame.text
        if not text.strip():
            raise FrameRejected(BadRequest("text must not be empty"), frame.request_id)
        if has_control_characters(text):
            raise FrameRejected(
                BadRequest("text must not contain control characters"), frame.request_id
            )
        return ChatFrame(frame.request_id, text)
    return _PING


_MISSING = re.compile(r"^Object missing required field `(.+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `(.+)`")
_FIELD = re.compile(r" - at `\$\.(\w+)`$")
_FIELD_RULES = {
    "request_id": f"request_id must be 1 to {MAX_REQUEST_ID_LENGTH} characters of "
    "letters, digits and _ . : -",
    "count": f"count must be a whole number from 1 to {MAX_COMBO}",
    "gift_id": "gift_id must be a string",
}


def _rejected(exc: msgspec.ValidationError, data: str | bytes) -> FrameRejected:
    """A refusal in the protocol's own words (the messages clients have always had),
    with the frame's request_id when it named a valid one. The slow path: only
    refusals come here, and the frame is parsed again to say what was wrong."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        return FrameRejected(BadRequest(_NOT_AN_OBJECT))
    raw_request_id = obj.get("request_id")
    request_id = raw_request_id if valid_request_id(raw_request_id) else None
    kind = obj.get("type")
    if not isinstance(kind, str):
        return FrameRejected(BadRequest(_NO_TYPE), request_id)
    if kind not in _FRAME_TYPES:
        message = f"unknown frame type {kind[:40]!r}: use gift, chat or ping"
        return FrameRejected(BadRequest(message), request_id)
    detail = str(exc)
    if missing := _MISSING.match(detail):
        message = f"{kind} frame is missing: {missing.group(1)}"
    elif unknown := _UNKNOWN.match(detail):
        message = f"{kind} frame has unknown fields: {unknown.group(1)[:40]}"
    elif (field := _FIELD.search(detail)) and field.group(1) == "text":
        text = obj.get("text")
        if not isinstance(text, str):
            message = "text must be a string"
        elif not text:
            message = "text must not be empty"
        else:
            message = f"text is longer than {MAX_CHAT_LENGTH} characters"
    elif field:
        message = _FIELD_RULES.get(field.group(1), detail)
    else:
        message = detail
    return FrameRejected(BadRequest(message), request_id)


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
