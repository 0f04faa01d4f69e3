"""One bot viewer: a `giftstream_client.RoomSession` in a live room that watches, and,
when signed in, chats and sends gifts at its planned rates.

The session does the connection's work: it reopens every close but a final one (4401,
4404) with `since=<last seq>` after a jittered backoff that starts again at each
welcome (so a viewer survives any number of closes over its life, and gives up only
after `max_reconnects` failures in a row), drops events seen before, resends a gift
whose answer a dropped connection took with it (same request_id: never charged twice),
and paces gifts and chat under the limits the server's welcome names.

A viewer owns, besides the session's reader (its `run`), two tasks: the actor (sends)
and the closer (waits for `leave()`, lets the gift in flight be answered, closes). All
live in one TaskGroup, so none outlives the viewer.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from client_sim.feed import LiveFeed
from client_sim.gifts import COMBO_MAX_COINS, GiftInfo, GiftPicker
from client_sim.stats import SimStats
from giftstream_client.errors import ApiError, GiftstreamError, RoomClosed, RoomRefusal
from giftstream_client.frames import ErrorFrame, Events, RoomState, Welcome
from giftstream_client.models import Account
from giftstream_client.reconnect import Backoff
from giftstream_client.rest import GiftstreamClient
from giftstream_client.room import RoomSession

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
    """How a signed-in viewer behaves. Rates are averages (Poisson arrivals) per viewer;
    the server's own limits (from its welcome) cap them."""

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
    # Failures in a row (no welcome in between) before the viewer gives up.
    max_reconnects: int = 8

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
        room_id: str,
        account: Account | None,
        coins: int,
        plan: ViewerPlan,
        picker: GiftPicker,
        api: GiftstreamClient,
        stats: SimStats,
        feed: LiveFeed,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.room_id = room_id
        self.account = account
        self.coins = coins
        self.plan = plan
        self.picker = picker
        self.api = api
        self.stats = stats
        self.feed = feed
        self.rng = rng
        self.session = RoomSession(
            ws_base,
            room_id,
            token=account.token if account else None,
            backoff=Backoff(max_failures=plan.max_reconnects, rng=random.Random(rng.random())),
            compression=None,
            close_timeout=2,
        )
        self._leaving = asyncio.Event()
        self._chats: set[str] = set()

    @property
    def connected(self) -> bool:
        return self.session.connection is not None

    def leave(self) -> None:
        """Stop sending, let the gift in flight be answered (up to `plan.drain_s`), close."""
        self._leaving.set()

    async def run(self, *, start_after_s: float = 0.0) -> None:
        """Connect (after `start_after_s`) and stay until `leave()`, the room's end, or a
        final close."""
        if start_after_s > 0 and await self._pause(start_after_s):
            return
        session = self.session
        try:
            async with asyncio.TaskGroup() as tasks:
                closer = tasks.create_task(self._close_on_leave())
                actor: asyncio.Task[None] | None = None
                async for frame in session:
                    if isinstance(frame, Events):
                        self._on_events(frame)
                    elif isinstance(frame, Welcome):
                        self._on_welcome(frame)
                        if actor is None and self.account is not None:
                            actor = tasks.create_task(self._act())
                    elif isinstance(frame, RoomState):
                        self.feed.room_state(self.room_id, frame)
                    elif isinstance(frame, ErrorFrame):
                        self._on_error(frame)
                closer.cancel()
                if actor is not None:
                    actor.cancel()
        except RoomClosed:
            pass  # gave up reconnecting: counted below
        finally:
            self._count_closes()

    def _count_closes(self) -> None:
        s, stats = self.session, self.stats
        for code, n in s.closes.items():
            stats.closes[str(code)] += n
        for reason, n in s.connect_failures.items():
            stats.connect_failures[reason] += n
        stats.reconnects += s.reconnects
        stats.reconnects_max = max(stats.reconnects_max, s.reconnects)
        stats.seq_gaps += s.tracker.gaps
        stats.seq_duplicates += s.tracker.duplicates
        if s.backoff.exhausted:
            stats.gave_up += 1

    def _on_welcome(self, welcome: Welcome) -> None:
        if self.session.connections == 1:
            self.stats.viewers_connected += 1
            self.stats.limits = welcome.limits
        if welcome.you is not None:
            self.coins = welcome.you.coins
        self.feed.welcome(self.room_id, welcome)

    def _on_events(self, frame: Events) -> None:
        stats = self.stats
        stats.frames_received += 1
        now_ms = time.time() * 1000.0
        for event in frame.events:
            stats.events_received[event.kind] += 1
            self.feed.event(self.room_id, event)
            if event.kind == "gift" and event.ts:
                # From the event's server time to its receipt: the two share a clock
                # when they share a machine (else it is as good as their NTP).
                stats.broadcast_latency.record((now_ms - event.ts) / 1000.0)
            elif event.kind == "room_ended":
                self._leaving.set()

    def _on_error(self, frame: ErrorFrame) -> None:
        if frame.request_id in self._chats:
            self._chats.discard(frame.request_id)
            self.stats.chats_refused[frame.code] += 1
        elif frame.request_id is None:
            self.stats.gifts_refused[f"other:{frame.code}"] += 1

    async def _close_on_leave(self) -> None:
        await self._leaving.wait()
        await self.session.close(drain_s=self.plan.drain_s)

    async def _act(self) -> None:
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
                await self.session.wait_connected()
                if self.rng.random() * total < plan.chat_rate:
                    await self._chat()
                else:
                    await self._gift_action()
        except RoomClosed:
            return  # the session is over; the reader ends too

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds` unless asked to leave first; True when leaving."""
        try:
            async with asyncio.timeout(seconds):
                await self._leaving.wait()
        except TimeoutError:
            return False
        return True

    async def _chat(self) -> None:
        if len(self._chats) > 1000:
            self._chats.clear()  # only refusals are looked up; old ids are long answered
        request_id = await self.session.chat(self.rng.choice(CHAT_LINES))
        self._chats.add(request_id)
        self.stats.chats_sent += 1

    async def _gift_action(self) -> None:
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
                await self._send_gift(gift, 1)
                if await self._pause(self.plan.tap_interval_s):
                    return
        else:
            count = 1
            if gift.coins <= COMBO_MAX_COINS and self.rng.random() < 0.1:
                count = min(self.rng.choice((5, 10, 99)), self.coins // gift.coins)
            await self._send_gift(gift, max(count, 1))

    async def _send_gift(self, gift: GiftInfo, count: int) -> None:
        stats = self.stats
        stats.gifts_sent += 1
        try:
            ack = await self.session.gift(gift.gift_id, count)
        except RoomRefusal as exc:
            stats.gifts_refused[exc.code] += 1
            return
        except (TimeoutError, RoomClosed):
            stats.gifts_unanswered += 1
            return
        stats.gifts_acked += 1
        stats.gifts_resent += ack.sends - 1
        stats.coins_spent += gift.coins * count
        stats.ack_latency.record(ack.latency_s)
        self.coins = ack.coins

    async def _top_up(self) -> bool:
        """Buy another package (as a real viewer does when it runs low)."""
        assert self.account is not None
        try:
            recharge = await self.api.recharge(self.account, self.plan.package_id)
        except ApiError as exc:
            self.stats.recharge_failures[exc.code] += 1
            return False
        except GiftstreamError as exc:
            self.stats.recharge_failures[type(exc).__name__] += 1
            return False
        self.stats.recharges += 1
        self.coins = recharge.coins
        return True
