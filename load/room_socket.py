"""A viewer's WebSocket to a live room for Locust users: the blocking `websocket-client`
socket (cooperative under Locust's gevent) and a receiver greenlet.

Everything it measures goes through Locust's `events.request`, so Locust's statistics,
CSV and HTML report show it, all with request_type "WS":

- "connect": the handshake up to the welcome frame;
- "gift ack": a gift's send to its ack, or a failure named by the error frame's code;
- "chat": a chat line's send to the sender seeing its own chat event, or its refusal;
- "broadcast": a gift's send by any viewer of this process to this viewer's receipt of
  the room event it became (matched through `client_sim.broadcast`; see there why
  that is exact without anything new in the protocol);
- "connection": a close by the server (code in the failure) — the user reconnects with
  `since`, so it misses nothing.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import gevent
import orjson
import websocket

from client_sim.broadcast import BroadcastTimer, SentGifts

WS = "WS"
ACK_TIMEOUT_S = 10.0
OPEN_TIMEOUT_S = 10.0


class WsRefused(Exception):
    """The server refused a frame; the message is its stable error code."""


class WsClosed(Exception):
    """The server closed the connection; the message is the close code."""


class WsTimeout(Exception):
    """No answer in time."""


RequestFire = Callable[..., None]


class RoomSocket:
    def __init__(
        self,
        *,
        ws_base: str,
        room_id: str,
        token: str | None,
        user_id: str | None,
        timer: BroadcastTimer,
        fire: RequestFire,
        broadcast_sample: int = 1,
    ) -> None:
        self.ws_base = ws_base
        self.room_id = room_id
        self.token = token
        self.user_id = user_id
        self.timer = timer
        self._fire = fire
        self.broadcast_sample = max(1, broadcast_sample)
        self.coins = 0
        self.last_seq: int | None = None
        self.ended = False
        self._ws: websocket.WebSocket | None = None
        self._receiver: gevent.Greenlet | None = None
        self._closing = False
        # request_id -> (sent_at, coins)
        self._gifts: dict[str, tuple[float, int]] = {}
        self._chats: dict[str, float] = {}
        self._own_gifts = SentGifts()
        self._own_chats = SentGifts()

    @property
    def alive(self) -> bool:
        return self._receiver is not None and not self._receiver.dead

    def open(self) -> None:
        """Connect (with `since` after a first visit), read the welcome, start receiving.
        Reported as "connect"; raises nothing (a failed connect is a reported failure)."""
        query: dict[str, str | int] = {}
        if self.token:
            query["token"] = self.token
        if self.last_seq is not None:
            query["since"] = self.last_seq
        url = f"{self.ws_base}/ws/rooms/{self.room_id}" + ("?" + urlencode(query) if query else "")
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                # orjson checks the UTF-8 anyway, far faster than websocket-client would.
                url,
                timeout=OPEN_TIMEOUT_S,
                enable_multithread=True,
                skip_utf8_validation=True,
            )
            opcode, frame = ws.recv_data_frame(True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                ws.shutdown()
                raise WsClosed(str(_close_code(frame.data)))
            welcome = orjson.loads(frame.data)
            if welcome.get("type") != "welcome":
                ws.shutdown()
                raise WsClosed("no welcome")
        except Exception as exc:  # every failure is a reported request, never a crash
            self._report("connect", started, exception=exc)
            return
        ws.settimeout(None)
        self._report("connect", started)
        if self.last_seq is None:
            self.last_seq = int(welcome.get("seq", 0))
        you = welcome.get("you")
        if isinstance(you, dict):
            self.coins = int(you.get("coins", 0))
        self._ws = ws
        self._closing = False
        self._receiver = gevent.spawn(self._receive, ws)

    def close(self) -> None:
        """Close: a close frame, a short wait for the server's, then the socket."""
        ws, receiver = self._ws, self._receiver
        self._ws = None
        self._closing = True
        if ws is None:
            return
        try:
            ws.send_close()
        except Exception:
            pass
        if receiver is not None:
            receiver.join(timeout=2.0)
            receiver.kill(block=False)
        ws.shutdown()
        self._gifts.clear()
        self._chats.clear()

    # --- sending ----------------------------------------------------------------------

    def send_gift(self, gift_id: str, count: int, coins: int) -> None:
        ws = self._ws
        if ws is None:
            return
        self._expire_unanswered()
        request_id = uuid.uuid4().hex
        data = orjson.dumps(
            {"type": "gift", "request_id": request_id, "gift_id": gift_id, "count": count}
        ).decode()
        sent_at = time.perf_counter()
        self._gifts[request_id] = (sent_at, coins)
        self._own_gifts.sent(request_id, sent_at)
        self.coins -= coins
        ws.send(data)

    def send_chat(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            return
        request_id = uuid.uuid4().hex
        data = orjson.dumps({"type": "chat", "request_id": request_id, "text": text}).decode()
        sent_at = time.perf_counter()
        self._chats[request_id] = sent_at
        self._own_chats.sent(request_id, sent_at)
        ws.send(data)

    def _expire_unanswered(self) -> None:
        cutoff = time.perf_counter() - ACK_TIMEOUT_S
        for request_id, (sent_at, _) in list(self._gifts.items()):
            if sent_at < cutoff:
                del self._gifts[request_id]
                self._own_gifts.refused(request_id)
                self._report("gift ack", sent_at, exception=WsTimeout("no ack"))
        for request_id, sent_at in list(self._chats.items()):
            if sent_at < cutoff:
                del self._chats[request_id]

    # --- receiving --------------------------------------------------------------------

    def _receive(self, ws: websocket.WebSocket) -> None:
        code = 1006
        try:
            while True:
                opcode, frame = ws.recv_data_frame(True)
                at = time.perf_counter()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self._on_frame(orjson.loads(frame.data), at, len(frame.data))
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = _close_code(frame.data)
                    break
        except Exception:
            pass  # the connection is gone; the code says how, below
        if not self._closing and not self.ended:
            self._fire(
                request_type=WS,
                name="connection",
                response_time=0,
                response_length=0,
                exception=WsClosed(str(code)),
                context={},
            )
            self._ws = None
            self._gifts.clear()
            self._own_gifts.clear()
            self._chats.clear()
            self._own_chats.clear()

    def _on_frame(self, frame: dict[str, Any], at: float, size: int) -> None:
        kind = frame.get("type")
        if kind == "events":
            for event in frame.get("events", ()):
                self._on_event(event, at)
        elif kind == "ack":
            sent = self._gifts.pop(str(frame.get("request_id")), None)
            if sent is not None:
                self.coins = int(frame["coins"]) - sum(c for _, c in self._gifts.values())
                self._report("gift ack", sent[0], at=at, size=size)
        elif kind == "error":
            request_id = frame.get("request_id")
            refusal = WsRefused(str(frame.get("code")))
            if request_id in self._gifts:
                sent_at, coins = self._gifts.pop(request_id)
                self.coins += coins
                self._own_gifts.refused(request_id)
                self._report("gift ack", sent_at, at=at, exception=refusal)
            elif request_id in self._chats:
                sent_at = self._chats.pop(request_id)
                self._own_chats.refused(request_id)
                self._report("chat", sent_at, at=at, exception=refusal)

    def _on_event(self, event: dict[str, Any], at: float) -> None:
        seq = int(event["seq"])
        if self.last_seq is not None and seq <= self.last_seq:
            return  # already seen (cannot happen by the contract; never counted twice)
        self.last_seq = seq
        kind = event.get("kind")
        own = self.user_id is not None and (event.get("from") or {}).get("user_id") == (
            self.user_id
        )
        if kind == "gift":
            if own:
                sent = self._own_gifts.own_event()
                if sent is not None:
                    for earlier in self.timer.sent(self.room_id, seq, sent[1], at):
                        self._report_latency("broadcast", earlier)
            if seq % self.broadcast_sample == 0:
                latency = self.timer.received(self.room_id, seq, at)
                if latency is not None:
                    self._report_latency("broadcast", latency)
        elif kind == "chat" and own:
            sent = self._own_chats.own_event()
            if sent is not None:
                self._chats.pop(sent[0], None)
                self._report("chat", sent[1], at=at)
        elif kind == "room_ended":
            self.ended = True

    # --- reporting --------------------------------------------------------------------

    def _report(
        self,
        name: str,
        started: float,
        *,
        at: float | None = None,
        size: int = 0,
        exception: Exception | None = None,
    ) -> None:
        end = time.perf_counter() if at is None else at
        self._fire(
            request_type=WS,
            name=name,
            response_time=(end - started) * 1000.0,
            response_length=size,
            exception=exception,
            context={},
        )

    def _report_latency(self, name: str, seconds: float) -> None:
        self._fire(
            request_type=WS,
            name=name,
            response_time=seconds * 1000.0,
            response_length=0,
            exception=None,
            context={},
        )


def _close_code(data: bytes) -> int:
    if len(data) >= 2:
        return int(struct.unpack("!H", data[:2])[0])
    return 1005
