"""The load clients: viewers that count what a room delivers, a sample of viewers that
time every gift event, and gift senders.

Per-frame work is kept to what the measurement needs. A `RoomViewer` reads an events
frame without decoding it: the events in it are counted with one `bytes.count`, and only
the first and last seq are parsed; a coalesced frame holds consecutive seqs, so
`last - first + 1 == count` proves it complete (anything else falls back to reading
every seq). Across frames the viewer checks that each event arrives once and none is
skipped. A `TimedViewer` also decodes each events frame and keeps, for every gift event,
(sender, combo, time received): the bench maps (sender, combo) back to the time the
sender sent that gift, since a sender's n-th acked rose in a room is the event with
combo n (the server runs with a combo gap longer than the run).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import Counter
from typing import Any

import orjson

from bench.wire import Buffer, WebSocketClient

SEQ_MARK = b'{"seq":'
SEQ_AT = re.compile(rb'\{"seq":(\d+)')
EVENTS = b'{"type":"events"'
WELCOME = b'{"type":"welcome"'
ACK = b'{"type":"ack"'
ERROR = b'{"type":"error"'


class RoomViewer(WebSocketClient):
    """Counts frames, events and bytes of `events` frames, and checks the seqs.

    `welcomed` resolves to True at the welcome frame, False if the connection ended
    first. Counters (and `missing`, `duplicates`) cover the time since `mark()`;
    `next_seq` (the seq this viewer waits for next) runs on across marks.
    """

    def __init__(self, *, host: str, port: int, path: str) -> None:
        super().__init__(host=host, port=port, path=path)
        self.welcomed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.next_seq = 0
        self.mark_seq = 0
        self.missing = 0
        self.duplicates = 0
        self.frames = 0
        self.events = 0
        self.bytes = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.other_frames = 0

    def mark(self) -> None:
        self.mark_seq = self.next_seq
        self.missing = self.duplicates = self.frames = self.events = self.bytes = 0
        self.first_at = self.last_at = 0.0
        self.other_frames = 0

    def on_text(self, buf: Buffer, start: int, end: int, now: float) -> None:
        if buf.startswith(EVENTS, start):
            self.frames += 1
            self.bytes += end - start
            if not self.first_at:
                self.first_at = now
            self.last_at = now
            count = buf.count(SEQ_MARK, start, end)
            if count:
                self.events += count
                first_match = SEQ_AT.search(buf, start, end)
                last_match = SEQ_AT.match(buf, buf.rfind(SEQ_MARK, start, end))
                assert first_match is not None and last_match is not None
                first = int(first_match.group(1))
                last = int(last_match.group(1))
                if last - first + 1 == count:
                    self._track(first, last)
                else:
                    for match in SEQ_AT.finditer(buf, start, end):
                        seq = int(match.group(1))
                        self._track(seq, seq)
                self.on_events(buf, start, end, now)
        elif buf.startswith(WELCOME, start):
            welcome = orjson.loads(buf[start:end])
            self.next_seq = int(welcome["seq"]) + 1
            self.on_welcome(welcome)
            if not self.welcomed.done():
                self.welcomed.set_result(True)
        else:
            self.other_frames += 1
            self.on_other(buf, start, end, now)

    def _track(self, first: int, last: int) -> None:
        expected = self.next_seq
        if first == expected:
            self.next_seq = last + 1
        elif first > expected:
            self.missing += first - expected
            self.next_seq = last + 1
        else:
            self.duplicates += min(last, expected - 1) - first + 1
            if last >= expected:
                self.next_seq = last + 1

    def on_events(self, buf: Buffer, start: int, end: int, now: float) -> None:
        pass

    def on_welcome(self, welcome: dict[str, Any]) -> None:
        pass

    def on_other(self, buf: Buffer, start: int, end: int, now: float) -> None:
        pass

    def on_closed(self) -> None:
        if not self.welcomed.done():
            self.welcomed.set_result(False)


class TimedViewer(RoomViewer):
    """A viewer that also decodes every events frame and keeps when each event came:
    gift events as (sender, combo, received), and the bench's raw server's events as
    latencies (they carry their send time, `t`, on the same monotonic clock)."""

    def __init__(self, *, host: str, port: int, path: str) -> None:
        super().__init__(host=host, port=port, path=path)
        self.gifts: list[tuple[str, int, float]] = []
        self.raw_latencies_ms: list[float] = []

    def mark(self) -> None:
        super().mark()
        self.gifts = []
        self.raw_latencies_ms = []

    def on_events(self, buf: Buffer, start: int, end: int, now: float) -> None:
        for event in orjson.loads(buf[start:end])["events"]:
            kind = event.get("kind")
            if kind == "gift":
                self.gifts.append((event["from"]["user_id"], int(event["combo"]), now))
            elif kind == "raw":
                self.raw_latencies_ms.append((now - float(event["t"])) * 1000)


class GiftSender(RoomViewer):
    """A signed-in viewer that sends roses, open loop (at a rate) or closed loop (the
    next gift once the last is answered), and times each ack.

    The server serves a connection's frames one at a time, so gifts are debited and
    published in the order they were sent: `published_sent_at()[n - 1]` is when the gift
    shown with combo n left (refused gifts publish nothing and are left out).
    """

    def __init__(self, *, host: str, port: int, path: str, user_id: str) -> None:
        super().__init__(host=host, port=port, path=path)
        self.user_id = user_id
        self.tag = secrets.token_hex(4)
        self.coins_at_welcome: int | None = None
        self.last_coins: int | None = None
        self.sent = 0
        self.acked = 0
        self.held_back = 0
        self.errors: Counter[str] = Counter()
        self.ack_ms: list[float] = []
        self._sent_log: list[tuple[str, float]] = []
        self._refused: set[str] = set()
        self._in_flight: dict[str, float] = {}
        self._answered: asyncio.Event = asyncio.Event()

    def reset_counts(self) -> None:
        self.sent = self.acked = self.held_back = 0
        self.errors = Counter()
        self.ack_ms = []
        self._sent_log = []
        self._refused = set()
        self._in_flight.clear()

    def published_sent_at(self) -> list[float]:
        """Send times of the gifts sent since the reset and not refused, in order."""
        return [t for request_id, t in self._sent_log if request_id not in self._refused]

    def on_welcome(self, welcome: dict[str, Any]) -> None:
        you = welcome.get("you")
        if isinstance(you, dict):
            self.coins_at_welcome = int(you["coins"])
            self.last_coins = self.coins_at_welcome

    def on_other(self, buf: Buffer, start: int, end: int, now: float) -> None:
        if buf.startswith(ACK, start):
            answer = orjson.loads(buf[start:end])
            sent_at = self._in_flight.pop(answer["request_id"], None)
            if sent_at is not None:
                self.acked += 1
                self.ack_ms.append((now - sent_at) * 1000)
            self.last_coins = int(answer["coins"])
            self._answered.set()
        elif buf.startswith(ERROR, start):
            answer = orjson.loads(buf[start:end])
            request_id = answer.get("request_id") or ""
            self._in_flight.pop(request_id, None)
            self._refused.add(request_id)
            self.errors[str(answer.get("code"))] += 1
            self._answered.set()

    def on_closed(self) -> None:
        super().on_closed()
        self._answered.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def send_gift(self) -> None:
        self.sent += 1
        request_id = f"{self.tag}-{self.sent}"
        frame = b'{"type":"gift","request_id":"%s","gift_id":"rose","count":1}' % (
            request_id.encode()
        )
        now = time.monotonic()
        self._in_flight[request_id] = now
        self._sent_log.append((request_id, now))
        self.send_text(frame)

    async def run_open_loop(
        self, *, rate: float, start_at: float, duration: float, max_in_flight: int
    ) -> None:
        """Offer a gift every 1/`rate` s from `start_at` (monotonic) for `duration`
        seconds, whatever the answers, except that a gift due while `max_in_flight` are
        unanswered is held back (counted in `held_back`): the backlog a server that
        cannot keep up builds stays bounded, and so does the time it needs to clear it."""
        interval = 1.0 / rate
        n = 0
        while not self.closed.done():
            due = start_at + n * interval
            if due >= start_at + duration:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            if len(self._in_flight) >= max_in_flight:
                self.held_back += 1
            else:
                self.send_gift()

    async def run_closed_loop(self, *, start_at: float, duration: float, timeout: float) -> None:
        """From `start_at`, send a gift, wait for its answer, repeat, for `duration`."""
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        stop_at = start_at + duration
        while time.monotonic() < stop_at and not self.closed.done():
            self._answered.clear()
            self.send_gift()
            try:
                async with asyncio.timeout(timeout):
                    while self._in_flight:
                        await self._answered.wait()
                        self._answered.clear()
            except TimeoutError:
                return

    async def settle(self, *, timeout: float) -> None:
        """Wait until every gift sent has been answered (or the connection is gone)."""
        try:
            async with asyncio.timeout(timeout):
                while self._in_flight and not self.closed.done():
                    self._answered.clear()
                    await self._answered.wait()
        except TimeoutError:
            pass
