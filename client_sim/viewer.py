"""One bot viewer: a WebSocket to a live room (the `websockets` asyncio client) that
watches, and, when signed in, chats and sends gifts at its planned rates.

A viewer owns two tasks per connection besides its read loop: the actor (sends) and
the closer (waits for `leave()`, lets answers in flight arrive, closes). All three live
in one TaskGroup, so none outlives the connection. A connection the server drops
(1008 too slow, 1013 try later, 1006 lost) is reopened with `since=<last seq>`, so the
viewer misses nothing; 4401 and 4404 are final.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from client_sim.api import Account, ApiError, GiftstreamApi, RoomInfo
from client_sim.broadcast import BroadcastTimer, SentGifts
from client_sim.feed import LiveFeed
from client_sim.gifts import COMBO_MAX_COINS, GiftInfo, GiftPicker
from client_sim.pacing import (
    CHAT_BURST,
    CHAT_RATE_PER_S,
    GIFT_BURST,
    GIFT_RATE_PER_S,
    TokenGate,
)
from client_sim.stats import SimStats

# Close codes after which reconnecting cannot help: bad token, unknown or ended room.
FINAL_CLOSE_CODES = frozenset({4401, 4404})
WELCOME_TIMEOUT_S = 10.0

CHAT_LINES = (
    "hi!",
    "hello from the bot crowd",
    "love this",
    "so good",
    "wow",
    "lol",
    "first time here",
    "greetings",
    "keep going!",
    "that combo though",
    "where are you streaming from?",
    "this is fun",
    "gg",
    "nice one",
    "who else is here?",
    "let's go",
)


@dataclass(frozen=True, kw_only=True)
class ViewerPlan:
    """How a signed-in viewer behaves. Rates are averages (Poisson arrivals) per viewer."""

    gift_rate: float = 0.3
    chat_rate: float = 0.05
    # A share of gift actions on cheap gifts are combos: several quick taps of one gift.
    combo_share: float = 0.3
    combo_taps: tuple[int, int] = (3, 12)
    tap_interval_s: float = 0.12
    package_id: str = "p1000"
    # Buy more coins when the balance falls under this.
    top_up_below: int = 50
    drain_s: float = 2.0
    max_reconnects: int = 5

    @property
    def gift_actions_per_s(self) -> float:
        low, high = self.combo_taps
        frames_per_action = (1 - self.combo_share) + self.combo_share * (low + high) / 2
        return self.gift_rate / frames_per_action


class Viewer:
    def __init__(
        self,
        *,
        name: str,
        ws_base: str,
        room: RoomInfo,
        account: Account | None,
        coins: int,
        plan: ViewerPlan,
        picker: GiftPicker,
        api: GiftstreamApi,
        stats: SimStats,
        timer: BroadcastTimer,
        feed: LiveFeed,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.ws_base = ws_base
        self.room = room
        self.account = account
        self.coins = coins
        self.plan = plan
        self.picker = picker
        self.api = api
        self.stats = stats
        self.timer = timer
        self.feed = feed
        self.rng = rng
        self.last_seq: int | None = None
        self.ended = False
        self._leaving = asyncio.Event()
        self._welcomed_once = False
        # Gifts sent and not yet answered: request_id -> (sent_at, coins).
        self._in_flight: dict[str, tuple[float, int]] = {}
        self._answered = asyncio.Event()
        self._chats: set[str] = set()
        self._own_gifts = SentGifts()
        self._gift_gate = TokenGate.under(GIFT_RATE_PER_S, GIFT_BURST)
        self._chat_gate = TokenGate.under(CHAT_RATE_PER_S, CHAT_BURST)

    def leave(self) -> None:
        """Stop sending, let answers in flight arrive (up to `plan.drain_s`), close."""
        self._leaving.set()

    async def run(self, *, start_after_s: float = 0.0) -> None:
        """Connect (after `start_after_s`) and stay until `leave()`, the room's end, or a
        final close."""
        if start_after_s > 0 and await self._pause(start_after_s):
            return
        failures = 0
        while not self._leaving.is_set() and not self.ended:
            try:
                conn = await connect(
                    self._url(),
                    open_timeout=WELCOME_TIMEOUT_S,
                    close_timeout=2,
                    max_size=2**22,
                    compression=None,
                )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                self.stats.connect_failures[type(exc).__name__] += 1
                code: int | None = 1006
            else:
                code = await self._session(conn)
            if code is None or code in FINAL_CLOSE_CODES:
                return
            failures += 1
            if failures > self.plan.max_reconnects:
                return
            await self._pause(min(5.0, 0.25 * 2**failures))

    def _url(self) -> str:
        query: dict[str, str | int] = {}
        if self.account is not None:
            query["token"] = self.account.token
        if self.last_seq is not None:
            query["since"] = self.last_seq
        path = f"{self.ws_base}/ws/rooms/{self.room.room_id}"
        return path + ("?" + urlencode(query) if query else "")

    async def _session(self, conn: ClientConnection) -> int | None:
        """One connection: the close code when the server ended it, None when we did."""
        try:
            async with asyncio.timeout(WELCOME_TIMEOUT_S):
                raw = await conn.recv()
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            self.stats.connect_failures[f"closed {code}"] += 1
            return code
        except TimeoutError:
            self.stats.connect_failures["no welcome"] += 1
            await conn.close()
            return 1006
        welcome = orjson.loads(raw)
        if welcome.get("type") != "welcome":
            self.stats.connect_failures["no welcome"] += 1
            await conn.close()
            return 1006
        self._on_welcome(welcome)
        self.stats.connected()
        try:
            async with asyncio.TaskGroup() as tasks:
                closer = tasks.create_task(self._close_on_leave(conn))
                actor = tasks.create_task(self._act(conn)) if self.account else None
                code = await self._read(conn)
                closer.cancel()
                if actor is not None:
                    actor.cancel()
        finally:
            self.stats.disconnected()
            # Whatever was in flight on this connection is answered on it or never.
            self.stats.gifts_unanswered += len(self._in_flight)
            self._in_flight.clear()
            self._own_gifts.clear()
        if self._leaving.is_set():
            return None
        self.stats.closes[str(code)] += 1
        return code

    def _on_welcome(self, frame: dict[str, Any]) -> None:
        if self._welcomed_once:
            self.stats.reconnects += 1
        else:
            self._welcomed_once = True
            self.stats.viewers_connected += 1
        if self.last_seq is None:
            # A first visit starts at the room's present; a return (since=) replays.
            self.last_seq = int(frame.get("seq", 0))
        you = frame.get("you")
        if isinstance(you, dict) and "coins" in you:
            self.coins = int(you["coins"])
        self.feed.welcome(self.room.room_id, frame)

    async def _read(self, conn: ClientConnection) -> int:
        try:
            async for message in conn:
                self._on_frame(orjson.loads(message), time.perf_counter())
        except ConnectionClosed:
            pass
        return conn.close_code or 1006

    def _on_frame(self, frame: dict[str, Any], at: float) -> None:
        self.stats.frames_received += 1
        kind = frame.get("type")
        if kind == "events":
            for event in frame.get("events", ()):
                self._on_event(event, at)
        elif kind == "room_state":
            self.feed.room_state(self.room.room_id, frame)
        elif kind == "ack":
            self._on_ack(frame, at)
        elif kind == "error":
            self._on_error(frame)

    def _on_event(self, event: dict[str, Any], at: float) -> None:
        seq = int(event["seq"])
        event_kind = str(event.get("kind"))
        self.stats.events_received[event_kind] += 1
        if self.last_seq is not None:
            if seq <= self.last_seq:
                self.stats.seq_duplicates += 1
                return
            if seq > self.last_seq + 1:
                self.stats.seq_gaps += seq - self.last_seq - 1
        self.last_seq = seq
        self.feed.event(self.room.room_id, event)
        if event_kind == "gift":
            room_id = self.room.room_id
            sender = (event.get("from") or {}).get("user_id")
            if self.account is not None and sender == self.account.user_id:
                own = self._own_gifts.own_event()
                if own is not None:
                    for earlier in self.timer.sent(room_id, seq, own[1], at):
                        self.stats.broadcast_latency.record(earlier)
            latency = self.timer.received(room_id, seq, at)
            if latency is not None:
                self.stats.broadcast_latency.record(latency)
        elif event_kind == "room_ended":
            self.ended = True
            self._leaving.set()

    def _on_ack(self, frame: dict[str, Any], at: float) -> None:
        sent = self._in_flight.pop(str(frame.get("request_id")), None)
        if sent is None:
            return
        self.stats.gifts_acked += 1
        self.stats.coins_spent += sent[1]
        self.stats.ack_latency.record(at - sent[0])
        # The ack's balance is after this gift; the ones still in flight come off it too.
        self.coins = int(frame["coins"]) - sum(cost for _, cost in self._in_flight.values())
        if not self._in_flight:
            self._answered.set()

    def _on_error(self, frame: dict[str, Any]) -> None:
        request_id = frame.get("request_id")
        code = str(frame.get("code"))
        if request_id in self._in_flight:
            _, cost = self._in_flight.pop(request_id)
            self.coins += cost
            self._own_gifts.refused(request_id)
            self.stats.gifts_refused[code] += 1
            if not self._in_flight:
                self._answered.set()
        elif request_id in self._chats:
            self._chats.discard(request_id)
            self.stats.chats_refused[code] += 1
        else:
            self.stats.gifts_refused[f"other:{code}"] += 1

    async def _close_on_leave(self, conn: ClientConnection) -> None:
        await self._leaving.wait()
        if self._in_flight:
            self._answered.clear()
            try:
                async with asyncio.timeout(self.plan.drain_s):
                    await self._answered.wait()
            except TimeoutError:
                pass
        await conn.close()

    async def _act(self, conn: ClientConnection) -> None:
        plan = self.plan
        gift_rate = plan.gift_actions_per_s
        total = gift_rate + plan.chat_rate
        if total <= 0:
            return
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while not self._leaving.is_set():
                # Poisson arrivals on their own schedule: the time an action takes (a
                # combo's taps, a top-up) does not lower the rate; a stall is not caught
                # up in a burst.
                next_at = max(next_at, loop.time() - 1.0) + self.rng.expovariate(total)
                if await self._pause(max(0.0, next_at - loop.time())):
                    return
                if self.rng.random() * total < plan.chat_rate:
                    await self._chat(conn)
                else:
                    await self._gift_action(conn)
        except ConnectionClosed:
            return  # the read loop sees the close and decides what follows

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds` unless asked to leave first; True when leaving."""
        try:
            async with asyncio.timeout(seconds):
                await self._leaving.wait()
        except TimeoutError:
            return False
        return True

    async def _chat(self, conn: ClientConnection) -> None:
        await self._through(self._chat_gate)
        request_id = uuid.uuid4().hex
        self._chats.add(request_id)
        if len(self._chats) > 1000:
            self._chats.clear()  # only refusals are looked up; old ids are long answered
        frame = {"type": "chat", "request_id": request_id, "text": self.rng.choice(CHAT_LINES)}
        await conn.send(orjson.dumps(frame).decode())
        self.stats.chats_sent += 1

    async def _gift_action(self, conn: ClientConnection) -> None:
        if self.coins < self.plan.top_up_below and not await self._top_up():
            return
        gift = self.picker.pick(self.rng, self.coins)
        if gift is None:
            return
        if gift.coins <= COMBO_MAX_COINS and self.rng.random() < self.plan.combo_share:
            taps = self.rng.randint(*self.plan.combo_taps)
            for _ in range(taps):
                if self._leaving.is_set() or self.coins < gift.coins:
                    return
                await self._send_gift(conn, gift, 1)
                if await self._pause(self.plan.tap_interval_s):
                    return
        else:
            count = 1
            if gift.coins <= COMBO_MAX_COINS and self.rng.random() < 0.1:
                count = min(self.rng.choice((5, 10, 99)), self.coins // gift.coins)
            await self._send_gift(conn, gift, max(count, 1))

    async def _send_gift(self, conn: ClientConnection, gift: GiftInfo, count: int) -> None:
        await self._through(self._gift_gate)
        request_id = uuid.uuid4().hex
        frame = {"type": "gift", "request_id": request_id, "gift_id": gift.gift_id, "count": count}
        data = orjson.dumps(frame).decode()
        sent_at = time.perf_counter()
        cost = gift.coins * count
        self._in_flight[request_id] = (sent_at, cost)
        self._own_gifts.sent(request_id, sent_at)
        self.coins -= cost
        self.stats.gifts_sent += 1
        await conn.send(data)

    async def _top_up(self) -> bool:
        """Buy another package (as a real viewer does when it runs low)."""
        assert self.account is not None
        try:
            balance = await self.api.recharge(self.account, self.plan.package_id)
        except ApiError as exc:
            self.stats.recharge_failures[exc.code] += 1
            return False
        self.stats.recharges += 1
        self.coins = balance - sum(cost for _, cost in self._in_flight.values())
        return True

    @staticmethod
    async def _through(gate: TokenGate) -> None:
        while (delay := gate.delay()) > 0:
            await asyncio.sleep(delay)
