"""The room protocol's frames (DESIGN section 4): the one codec every client here uses,
the asyncio one and its gevent twin alike. Pure: no I/O, no clock.

Client frames are built as records (`GiftRequest`, `ChatRequest`) and encoded with
orjson. Server frames decode into typed records (`Welcome`, `Events`, `Ack`, …).

A viewer that only needs to know that every event arrived once and in order need not
decode at all: `scan_events` reads an `events` frame's bytes and returns how many events
it holds and their first and last `seq`, without building a Python object per event.
That works because room events are stored as JSON that starts with its seq
(`{"seq":N,…`), and the bytes `{"seq":` cannot occur inside a JSON string (its quote
would be escaped); anything that does not scan cleanly is read the slow, sure way.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from giftstream_client.errors import ProtocolError
from giftstream_client.models import JsonObject, TopGifter, UserRef

PING = b'{"type":"ping"}'

# --- rate limits -----------------------------------------------------------------------

# What DESIGN section 4 gives as defaults: used when the server's welcome names none.
DEFAULT_GIFT_PER_S = 20.0
DEFAULT_GIFT_BURST = 50
DEFAULT_CHAT_PER_S = 2.0
DEFAULT_CHAT_BURST = 5
DEFAULT_MAX_FRAME_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's limits for one connection, as its welcome frame states them
    (`"limits": {gift_per_s, gift_burst, chat_per_s, chat_burst, max_frame_bytes}`).
    `from_server` is False when the welcome named none and these are DESIGN's defaults."""

    gift_per_s: float = DEFAULT_GIFT_PER_S
    gift_burst: int = DEFAULT_GIFT_BURST
    chat_per_s: float = DEFAULT_CHAT_PER_S
    chat_burst: int = DEFAULT_CHAT_BURST
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    from_server: bool = False

    @classmethod
    def from_json(cls, value: Any) -> Limits:
        """From the welcome's `limits` (None or absent: the defaults). A field that is
        missing or not a positive number keeps its default."""
        if not isinstance(value, dict):
            return cls()
        d = cls()

        def number(name: str, default: float) -> float:
            raw = value.get(name)
            if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0:
                return float(raw)
            return default

        return cls(
            gift_per_s=number("gift_per_s", d.gift_per_s),
            gift_burst=int(number("gift_burst", d.gift_burst)),
            chat_per_s=number("chat_per_s", d.chat_per_s),
            chat_burst=int(number("chat_burst", d.chat_burst)),
            max_frame_bytes=int(number("max_frame_bytes", d.max_frame_bytes)),
            from_server=True,
        )

    def describe(self) -> str:
        where = "from the server" if self.from_server else "defaults: the server named none"
        return (
            f"gifts {self.gift_per_s:g}/s (burst {self.gift_burst}), chat {self.chat_per_s:g}/s "
            f"(burst {self.chat_burst}), frames up to {self.max_frame_bytes} bytes ({where})"
        )


# --- client frames ---------------------------------------------------------------------


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class GiftRequest:
    """A gift frame. Its `request_id` is the idempotency key: resending this very frame,
    even on a new connection, is never charged twice."""

    gift_id: str
    count: int = 1
    request_id: str = field(default_factory=new_request_id)

    def as_dict(self) -> JsonObject:
        return {
            "type": "gift",
            "request_id": self.request_id,
            "gift_id": self.gift_id,
            "count": self.count,
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.as_dict())


@dataclass(frozen=True, slots=True)
class ChatRequest:
    text: str
    request_id: str = field(default_factory=new_request_id)

    def as_dict(self) -> JsonObject:
        return {"type": "chat", "request_id": self.request_id, "text": self.text}

    def encode(self) -> bytes:
        return orjson.dumps(self.as_dict())


ClientFrame = GiftRequest | ChatRequest


# --- server frames ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomRef:
    room_id: str
    title: str
    creator: UserRef
    status: str


@dataclass(frozen=True, slots=True)
class You:
    user_id: str
    coins: int


@dataclass(frozen=True, slots=True)
class Welcome:
    """The first frame of every connection. `seq` is the room's latest sequence number;
    with `since`, the missed events follow it. `recovered`: every missed event was still
    in the room's history."""

    room: RoomRef
    seq: int
    viewers: int
    top: tuple[TopGifter, ...]
    you: You | None
    recovered: bool
    limits: Limits


@dataclass(frozen=True, slots=True)
class Event:
    """One room event: `seq` (the room's sequence), `ts` (server time, epoch ms), `kind`
    (`gift`, `chat`, `room_ended`, or one this client does not know yet), and the event
    as the server sent it (`raw`) for every other field."""

    seq: int
    ts: int
    kind: str
    raw: JsonObject

    @property
    def sender(self) -> UserRef | None:
        sender = self.raw.get("from")
        return UserRef.from_json(sender) if isinstance(sender, dict) else None

    @property
    def gift_id(self) -> str:
        return str(self.raw.get("gift_id", ""))

    @property
    def count(self) -> int:
        return int(self.raw.get("count", 1))

    @property
    def coins(self) -> int:
        return int(self.raw.get("coins", 0))

    @property
    def combo(self) -> int:
        return int(self.raw.get("combo", 1))

    @property
    def text(self) -> str:
        return str(self.raw.get("text", ""))


@dataclass(frozen=True, slots=True)
class Events:
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class RoomState:
    viewers: int
    top: tuple[TopGifter, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """A gift was debited: `coins` is the sender's balance after it."""

    request_id: str
    coins: int


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    code: str
    message: str
    request_id: str | None


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame type this client does not know (a newer server): kept, never fatal."""

    type: str
    raw: JsonObject


ServerFrame = Welcome | Events | RoomState | Ack | ErrorFrame | Pong | UnknownFrame


def loads(data: bytes | str) -> JsonObject:
    """One server frame as a JSON object; `ProtocolError` if it is not one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"a frame that is not JSON: {data[:80]!r}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ProtocolError(f"a frame that is not a typed JSON object: {data[:80]!r}")
    return value


def _int(body: JsonObject, name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{body.get('type', 'a')} frame without a whole {name!r}")
    return value


def _top(value: Any) -> tuple[TopGifter, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(TopGifter.from_json(t) for t in value)


def parse_event(value: Any) -> Event:
    if not isinstance(value, dict):
        raise ProtocolError("a room event that is not a JSON object")
    return Event(_int(value, "seq"), _int(value, "ts", 0), str(value.get("kind", "")), value)


def parse(body: JsonObject) -> ServerFrame:
    """A decoded frame (from `loads`) as its record."""
    kind = body["type"]
    if kind == "events":
        events = body.get("events")
        if not isinstance(events, list):
            raise ProtocolError("an events frame without an events list")
        return Events(tuple(parse_event(e) for e in events))
    if kind == "ack":
        return Ack(str(body.get("request_id")), _int(body, "coins"))
    if kind == "error":
        rid = body.get("request_id")
        code, message = str(body.get("code", "")), str(body.get("message", ""))
        return ErrorFrame(code, message, None if rid is None else str(rid))
    if kind == "room_state":
        return RoomState(_int(body, "viewers", 0), _top(body.get("top")))
    if kind == "welcome":
        room = body.get("room")
        if not isinstance(room, dict):
            raise ProtocolError("a welcome without its room")
        you = body.get("you")
        return Welcome(
            room=RoomRef(
                str(room.get("room_id", "")),
                str(room.get("title", "")),
                UserRef.from_json(room.get("creator")),
                str(room.get("status", "")),
            ),
            seq=_int(body, "seq"),
            viewers=_int(body, "viewers", 0),
            top=_top(body.get("top")),
            you=You(str(you.get("user_id")), _int(you, "coins")) if isinstance(you, dict) else None,
            recovered=bool(body.get("recovered")),
            limits=Limits.from_json(body.get("limits")),
        )
    if kind == "pong":
        return Pong()
    return UnknownFrame(kind, body)


def decode(data: bytes | str) -> ServerFrame:
    return parse(loads(data))


# --- reading events without decoding them ------------------------------------------------

_EVENTS_PREFIX = b'{"type":"events"'
_SEQ_MARK = b'{"seq":'
_SEQ_AT = re.compile(rb'\{"seq":(\d+)')


def is_events(data: bytes) -> bool:
    """Whether `data` is an `events` frame as the server writes them (type first)."""
    return data.startswith(_EVENTS_PREFIX)


@dataclass(frozen=True, slots=True)
class EventsScan:
    """What an events frame holds, read from its bytes: `seqs` in order (only the first
    and last when the frame is one unbroken run, which is the rule)."""

    count: int
    first: int
    last: int
    seqs: tuple[int, ...] = ()

    @property
    def unbroken(self) -> bool:
        return self.last - self.first + 1 == self.count


def scan_events(data: bytes) -> EventsScan | None:
    """The events of an `events` frame without decoding it (None for any other frame).
    A frame whose events are not one unbroken, ascending run of seqs comes back with
    every seq listed (`seqs`), so a caller can check each one."""
    if not data.startswith(_EVENTS_PREFIX):
        return None
    count = data.count(_SEQ_MARK)
    if count == 0:
        return EventsScan(0, 0, -1)
    first_match = _SEQ_AT.search(data)
    last_match = _SEQ_AT.match(data, data.rfind(_SEQ_MARK))
    if first_match is None or last_match is None:
        raise ProtocolError("an events frame whose seqs cannot be read")
    first = int(first_match.group(1))
    last = int(last_match.group(1))
    if last - first + 1 == count:
        return EventsScan(count, first, last)
    seqs = tuple(int(m) for m in _SEQ_AT.findall(data))
    return EventsScan(count, first, last, seqs)


class SeqTracker:
    """The resume point of one viewer across its connections, and the proof that every
    event arrived once and in order.

    `since` is what to reconnect with (`?since=`): the last seq seen. `welcome(seq)` at
    each welcome: on a first visit the viewer starts at the room's present; on a return
    it keeps its own place (the missed events follow the welcome). `accept(seq)` for each
    event: True if it is new; a seq already seen is counted in `duplicates`, a jump in
    `gaps` (events never received)."""

    __slots__ = ("since", "gaps", "duplicates", "events")

    def __init__(self, since: int | None = None) -> None:
        self.since = since
        self.gaps = 0
        self.duplicates = 0
        self.events = 0

    def welcome(self, seq: int) -> None:
        if self.since is None:
            self.since = seq

    def accept(self, seq: int) -> bool:
        last = self.since
        if last is not None:
            if seq <= last:
                self.duplicates += 1
                return False
            if seq > last + 1:
                self.gaps += seq - last - 1
        self.since = seq
        self.events += 1
        return True

    def accept_scan(self, scan: EventsScan) -> int:
        """Every event of a scanned frame; how many were new."""
        if scan.count == 0:
            return 0
        last = self.since
        if not scan.seqs and (last is None or scan.first == last + 1):
            self.since = scan.last
            self.events += scan.count
            return scan.count
        seqs = scan.seqs or range(scan.first, scan.last + 1)
        return sum(1 for seq in seqs if self.accept(seq))
