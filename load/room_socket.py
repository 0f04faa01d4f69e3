"""A viewer's room socket for the Locust users: the one client's gevent twin
(`giftstream_client.green`), its codec and its reconnect rule, in one greenlet per
viewer that reads, resumes with `since` and reconnects by itself.

What it costs a load generator is what decides how many viewers one core can watch
with, so a watching viewer does the least that proves delivery: it reads each events
frame's bytes for their seqs (`frames.scan_events`), checks every event arrived once and
in order, and counts (`load.counters`); it decodes nothing, and reports nothing to
Locust per event. A sample of viewers (`timed`) decodes every events frame and reports
each gift event's broadcast latency. Everything else goes through Locust's
`events.request`, so its statistics, CSV and HTML report show it, with request_type "WS":

- "connect": the handshake up to the welcome frame (a failure names why);
- "gift ack": a gift's first send to its ack, or a failure named by the error's code
  (a gift whose connection dropped before its ack is sent again on the next one, with
  the same request_id: never charged twice, timed from its first send);
- "chat": a chat line's send to the sender seeing its own chat event, or its refusal;
- "broadcast": for the timed viewers, each gift event's server time (`ts`) to its
  receipt: one clock when the harness shares the server's machine, so it holds across
  Locust workers (on other machines it is as good as their clocks' sync);
- "connection": a close by the server (the code in the failure); the viewer comes back
  with `since` after the rule's jittered backoff, and misses nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import orjson
from gevent.event import Event

from giftstream_client.errors import GiftstreamError, RoomClosed
from giftstream_client.frames import (
    ChatRequest,
    GiftRequest,
    Limits,
    SeqTracker,
    scan_events,
)
from giftstream_client.green import GreenRoomConnection
from giftstream_client.reconnect import Backoff, should_reconnect
from giftstream_client.room import room_url
from load.counters import ProcessCounters

WS = "WS"
ACK_TIMEOUT_S = 10.0
# A viewer waits as long as an app would for a busy server; giving up sooner only makes
# the server do the handshake for nothing and the viewer ask again.
OPEN_TIMEOUT_S = 30.0
_EVENTS = b'{"type":"events"'
_ACK = b'{"type":"ack"'
_ERROR = b'{"type":"error"'

RequestFire = Callable[..., None]


class WsRefused(Exception):
    """The server refused a frame; the message is its stable error code."""


class WsClosed(Exception):
    """The server closed the connection; the message is the close code."""


class WsTimeout(Exception):
    """No answer in time."""


class WsConnectFailed(Exception):
    """The connection could not be opened; the message says why."""


class RoomSocket:
    """One viewer's stay in a room. `start()` spawns its greenlet (connect, read,
    reconnect); `close()` ends it. Sending works while `connected`."""

    def __init__(
        self,
        *,
        ws_base: str,
        room_id: str,
        token: str | None,
        user_id: str | None,
        fire: RequestFire,
        counters: ProcessCounters,
        timed: bool = False,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.ws_base = ws_base
        self.room_id = room_id
        self.token = token
        self.user_id = user_id
        self.timed = timed
        self._fire = fire
        self._counters = counters
        self.backoff = backoff or Backoff(rng=rng)
        self.tracker = SeqTracker()
        self.frames = 0
        self.coins = 0
        self.limits = Limits()
        self.conn: GreenRoomConnection | None = None
        self.final_code: int | None = None
        self._greenlet: gevent.Greenlet[[bool], None] | None = None
        self._ended = Event()
        self._closing = False
        self._welcomed = False
        # Own marker in frames: a frame holding it may hold this viewer's own events.
        self._own = f'"user_id":"{user_id}"'.encode() if user_id else b""
        # request_id -> (request, first sent at, coins)
        self._gifts: dict[str, tuple[GiftRequest, float, int]] = {}
        self._chats: dict[str, float] = {}
        self._chat_order: list[str] = []

    # --- what the counters read ---------------------------------------------------------

    @property
    def events(self) -> int:
        return self.tracker.events

    @property
    def gaps(self) -> int:
        return self.tracker.gaps

    @property
    def duplicates(self) -> int:
        return self.tracker.duplicates

    @property
    def connected(self) -> bool:
        return self.conn is not None

    @property
    def alive(self) -> bool:
        """Still in the room (connected or coming back)."""
        return not self._ended.is_set()

    # --- connecting, and reading from the event loop ---------------------------------

    def start(self) -> None:
        """Join the room: a greenlet connects (and reconnects after each close, by the
        rule's backoff); once welcomed, gevent's event loop hands each frame to this
        socket directly (`GreenRoomConnection.read_with`), with no greenlet waiting."""
        self._counters.add(self)
        self._greenlet = gevent.spawn(self._connect, False)

    def _connect(self, failed: bool) -> None:
        while not self._closing:
            if failed:
                pause = self.backoff.failed()
                if pause is None:
                    self._counters.gave_up()
                    self._ended.set()
                    return
                gevent.sleep(pause)
                if self._closing:
                    break
            conn = self._open()
            if conn is not None:
                if self._closing:
                    conn.abort()
                    break
                self.conn = conn
                # Gifts whose ack the last connection took with it: the same frames again.
                for request, _, _ in list(self._gifts.values()):
                    try:
                        conn.send(request)
                    except RoomClosed:
                        break
                conn.read_with(self._on_frame, self._on_end)
                return
            failed = True
        self._ended.set()

    def _open(self) -> GreenRoomConnection | None:
        url = room_url(self.ws_base, self.room_id, token=self.token, since=self.tracker.since)
        started = time.perf_counter()
        try:
            conn = GreenRoomConnection.open(url, timeout_s=OPEN_TIMEOUT_S)
        except RoomClosed as exc:
            self._report("connect", started, exception=WsClosed(str(exc.code)))
            if not should_reconnect(exc.code):
                self.final_code = exc.code
                self._closing = True
            return None
        except GiftstreamError as exc:
            self._report("connect", started, exception=WsConnectFailed(_reason(exc)))
            return None
        self._report("connect", started)
        welcome = conn.welcome
        assert welcome is not None
        self.backoff.succeeded()
        self.tracker.welcome(welcome.seq)
        self.limits = welcome.limits
        if welcome.you is not None:
            self.coins = welcome.you.coins - sum(c for _, _, c in self._gifts.values())
        if self._welcomed:
            self._counters.reconnected()
        else:
            self._welcomed = True
            self._counters.welcomed()
        return conn

    def _on_end(self, code: int) -> None:
        """The connection ended (called from the event loop: must not block)."""
        self.conn = None
        if self._closing:
            self._ended.set()
            return
        self._counters.closed(code)
        self._report("connection", time.perf_counter(), exception=WsClosed(str(code)))
        if not should_reconnect(code):
            self.final_code = code
            self._ended.set()
            return
        self._greenlet = gevent.spawn(self._connect, True)

    def _on_frame(self, data: bytes) -> None:
        """One frame (called from the event loop: must not block)."""
        if data.startswith(_EVENTS):
            self.frames += 1
            if self.timed:
                self._timed_events(data)
                return
            scan = scan_events(data)
            if scan is not None:
                self.tracker.accept_scan(scan)
            if self._own and self._own in data:
                self._own_events(data)
        elif self._gifts or self._chats:
            if data.startswith(_ACK):
                self._on_ack(data)
            elif data.startswith(_ERROR):
                self._on_error(data)

    def _timed_events(self, data: bytes) -> None:
        now_ms = time.time() * 1000.0
        tracker = self.tracker
        for event in orjson.loads(data)["events"]:
            if not tracker.accept(int(event["seq"])):
                continue
            kind = event.get("kind")
            if kind == "gift":
                self._report_latency("broadcast", (now_ms - int(event.get("ts", now_ms))))
            if self._chats and kind == "chat":
                self._own_chat(event)

    def _own_events(self, data: bytes) -> None:
        if not self._chats:
            return
        for event in orjson.loads(data)["events"]:
            if event.get("kind") == "chat":
                self._own_chat(event)

    def _own_chat(self, event: dict[str, Any]) -> None:
        sender = event.get("from") or {}
        if sender.get("user_id") != self.user_id:
            return
        # The server serves one connection's frames in order: its own chat events come
        # in the order it sent the lines that were not refused.
        while self._chat_order:
            request_id = self._chat_order.pop(0)
            sent_at = self._chats.pop(request_id, None)
            if sent_at is not None:
                self._report("chat", sent_at)
                return

    def _on_ack(self, data: bytes) -> None:
        frame = orjson.loads(data)
        sent = self._gifts.pop(str(frame.get("request_id")), None)
        if sent is None:
            return
        self.coins = int(frame["coins"]) - sum(c for _, _, c in self._gifts.values())
        self._report("gift ack", sent[1], size=len(data))

    def _on_error(self, data: bytes) -> None:
        frame = orjson.loads(data)
        request_id = frame.get("request_id")
        refusal = WsRefused(str(frame.get("code")))
        if request_id in self._gifts:
            _, sent_at, coins = self._gifts.pop(request_id)
            self.coins += coins
            self._report("gift ack", sent_at, exception=refusal)
        elif request_id in self._chats:
            self._report("chat", self._chats.pop(request_id), exception=refusal)

    # --- sending --------------------------------------------------------------------------

    def send_gift(self, gift_id: str, count: int, coins: int) -> bool:
        """Send a gift (its ack is reported when it comes); False when not connected."""
        conn = self.conn
        if conn is None:
            return False
        self._expire_unanswered()
        request = GiftRequest(gift_id, count)
        self._gifts[request.request_id] = (request, time.perf_counter(), coins)
        self.coins -= coins
        try:
            conn.send(request)
        except RoomClosed:
            pass  # sent again on the next connection
        return True

    def send_chat(self, text: str) -> bool:
        conn = self.conn
        if conn is None:
            return False
        request = ChatRequest(text)
        self._chats[request.request_id] = time.perf_counter()
        self._chat_order.append(request.request_id)
        try:
            conn.send(request)
        except RoomClosed:
            self._chats.pop(request.request_id, None)
            return False
        return True

    def _expire_unanswered(self) -> None:
        cutoff = time.perf_counter() - ACK_TIMEOUT_S
        for request_id, (_, sent_at, coins) in list(self._gifts.items()):
            if sent_at < cutoff:
                del self._gifts[request_id]
                self.coins += coins
                self._report("gift ack", sent_at, exception=WsTimeout("no ack"))
        for request_id, sent_at in list(self._chats.items()):
            if sent_at < cutoff:
                del self._chats[request_id]
                self._report("chat", sent_at, exception=WsTimeout("no chat event"))
        if len(self._chat_order) > 100:
            self._chat_order = [r for r in self._chat_order if r in self._chats]

    # --- leaving --------------------------------------------------------------------------

    def close(self, *, timeout_s: float = 2.0) -> None:
        """Leave: a close frame, a short wait for the server's reply and the end, then
        the socket is gone. What is still unanswered is not reported."""
        self._closing = True
        conn, greenlet = self.conn, self._greenlet
        if greenlet is not None and not greenlet.dead:
            greenlet.kill(block=True, timeout=1.0)  # a connect in progress
        if conn is not None:
            try:
                conn.start_close()
            except OSError:
                pass
            self._ended.wait(timeout_s)
            conn.abort()
        self._ended.set()
        self.conn = None
        self._gifts.clear()
        self._chats.clear()
        self._counters.retire(self)

    # --- reporting ------------------------------------------------------------------------

    def _report(
        self, name: str, started: float, *, size: int = 0, exception: Exception | None = None
    ) -> None:
        self._fire(
            request_type=WS,
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=size,
            exception=exception,
            context={},
        )

    def _report_latency(self, name: str, ms: float) -> None:
        self._fire(
            request_type=WS,
            name=name,
            response_time=max(0.0, ms),
            response_length=0,
            exception=None,
            context={},
        )


def _reason(exc: GiftstreamError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)
