"""The commands a viewer sends in a live room, gift and chat: the one path they take,
as the WebSocket endpoint (`server.ws`) and the tests run them. No sockets here.

A gift, top to bottom (DESIGN section 3):
1. who may send: a signed-in user, not the room's creator, in a room this process still
   sees live (`RoomCommands.gift`);
2. step 1, debit, in Redis: standing, the per-user rate limit, the spending cap and the
   balance are checked and the coins debited in one atomic step; its answer is the ack;
3. the debited transfer is handed to the `GiftFinisher`, which the process owns (not the
   socket, so a socket that goes away takes nothing with it). It runs, in order: step 3,
   publish (shown, or refused because the room ended); then step 2, the creator's credit
   (shown) or step 2'+4, the sender's refund (refused); then step 4, settle (credited);
4. whatever is left pending (a crash, a half-failed Redis) the `GiftSweeper` finishes,
   transfer by transfer, with backoff for one that keeps failing.
Every step is one Lua script that checks everything before it writes anything, and a
transfer leaves the pending hash only once its credit and its publish (or its refund)
are known to be done: nothing is lost, nothing shown twice.

Refusals are raised as `Refusal`s (their codes are the client's); a store that cannot
answer becomes `Unavailable`. Metrics are counted here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from server import economy, metrics
from server.errors import Refusal, RoomNotLive, Unauthorized, Unavailable
from server.protocol import ChatFrame, GiftFrame
from server.settings import Settings
from server.store.cancellation import reraise_lost_cancellation
from server.store.connection import is_store_error
from server.store.durability import Durability, NotDurable
from server.store.gifts import Decision, GiftSteps, Transfer
from server.store.keys import RoomKeys, UserKeys
from server.store.rooms import RoomStore
from server.store.wallets import Profile, now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveRoom:
    """The room a socket is in, as its admission found it."""

    room_id: str
    creator_id: str


class RoomCommands:
    def __init__(
        self,
        *,
        steps: GiftSteps,
        rooms: RoomStore,
        settings: Settings,
        is_live: Callable[[str], bool] = lambda room_id: True,
        durability: Durability | None = None,
    ) -> None:
        self._steps = steps
        self._rooms = rooms
        self._settings = settings
        self._is_live = is_live
        self._durability = durability
        self.finisher = GiftFinisher(steps, settings, durability=durability)
        self.sweeper = GiftSweeper(steps, self.finisher, settings)

    # --- gift --------------------------------------------------------------------------

    async def gift(self, sender: Profile | None, room: LiveRoom, frame: GiftFrame) -> int:
        """Send `frame`'s gift in `room`; returns the sender's coins after it (the ack).
        Idempotent by (sender, request_id): a retry, on any connection, is never charged
        twice (it gets the first answer). Once debited, the gift is shown exactly once and
        credited, or refunded if the room ended first, whatever happens to the caller.
        Raises a `Refusal` (nothing written) when refused."""
        started = time.perf_counter()
        try:
            coins = await self._gift(sender, room, frame)
        except Refusal as exc:
            metrics.GIFTS.labels(result=exc.code).inc()
            raise
        metrics.GIFT_ACK_SECONDS.observe(time.perf_counter() - started)
        metrics.GIFTS.labels(result="acked").inc()
        return coins

    async def _gift(self, sender: Profile | None, room: LiveRoom, frame: GiftFrame) -> int:
        if sender is None:
            raise Unauthorized("watching only: sign in (token=…) to send gifts")
        economy.check_gift_allowed(sender_id=sender.user_id, creator_id=room.creator_id)
        if not self._is_live(room.room_id):
            raise RoomNotLive("this live has ended")
        transfer = Transfer(
            transfer_id="g" + secrets.token_hex(8),
            sender_id=sender.user_id,
            sender_name=sender.name,
            room_id=room.room_id,
            creator_id=room.creator_id,
            gift_id=frame.gift.id,
            count=frame.count,
            coins=economy.gift_total(frame.gift, frame.count),
            created_ms=now_ms(),
        )
        debit = self._steps.debit(transfer, frame.request_id)
        # `_debited` runs when step 1 answers, even if this task is cancelled meanwhile:
        # this task awaits a future of its own, which `_debited` resolves (what
        # asyncio.shield does, with one future and one callback instead of its three).
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        debit.add_done_callback(partial(self._debited, transfer, answered))
        try:
            raw = await answered
        except Exception as exc:
            if not is_store_error(exc):
                raise
            metrics.REDIS_ERRORS.inc()
            log.warning("gift not debited, redis unavailable: %s", exc)
            raise Unavailable("the store is unavailable; try again") from None
        coins = GiftSteps.receipt(raw).coins
        if self._durability is not None and self._durability.level.waits:
            await self._durable(UserKeys.of(sender.user_id, self._settings.wallet_buckets).tag)
        return coins

    async def _durable(self, tag: str) -> None:
        """The ack waits for GS_ACK_DURABILITY: the debit (or, for a replay, the first
        attempt's) on the sender's primary's disk or replicas. Not in time: `Unavailable`,
        and a retry with the same request_id replays the debit and waits again."""
        assert self._durability is not None
        try:
            await self._durability.confirm(tag)
        except NotDurable as exc:
            metrics.REDIS_ERRORS.inc()
            log.warning("gift not acked: %s", exc)
            raise Unavailable(
                f"the gift is taken but not yet {self._durability.level}: send it again with"
                " the same request_id"
            ) from None
        except Exception as exc:
            if not is_store_error(exc):
                raise
            metrics.REDIS_ERRORS.inc()
            raise Unavailable("the store is unavailable; try again") from None

    def _debited(
        self, transfer: Transfer, answered: asyncio.Future[Any], debit: asyncio.Future[Any]
    ) -> None:
        if not answered.done():
            if debit.cancelled():
                answered.cancel()
            elif (error := debit.exception()) is not None:
                answered.set_exception(error)
                answered.exception()  # read: a caller that went away leaves no warning
            else:
                answered.set_result(debit.result())
        if debit.cancelled() or debit.exception() is not None:
            return  # not debited, or not known: then it is pending and the sweeper looks
        try:
            receipt = GiftSteps.receipt(debit.result())
        except Refusal:
            return
        if receipt.replayed:
            return  # the first attempt's steps are its process's (or the sweeper's)
        metrics.COINS_SPENT.inc(transfer.coins)
        self.finisher.hand_over(transfer)

    # --- chat --------------------------------------------------------------------------

    async def chat(self, sender: Profile | None, room: LiveRoom, frame: ChatFrame) -> None:
        """Post `frame`'s line in `room`. Once per (sender, request_id). Refused
        (`Refusal`) for a watcher, a suspended account (also on a socket opened before the
        suspension), a sender over the per-user chat rate, or a room that has ended."""
        try:
            await self._chat(sender, room, frame)
        except Refusal as exc:
            metrics.CHAT_LINES.labels(result=exc.code).inc()
            raise
        metrics.CHAT_LINES.labels(result="posted").inc()

    async def _chat(self, sender: Profile | None, room: LiveRoom, frame: ChatFrame) -> None:
        if sender is None:
            raise Unauthorized("watching only: sign in (token=…) to chat")
        if not self._is_live(room.room_id):
            raise RoomNotLive("this live has ended")
        try:
            await self._rooms.admit_chat(sender.user_id)
            await self._rooms.post_chat(
                room.room_id,
                user_id=sender.user_id,
                name=sender.name,
                request_id=frame.request_id,
                text=frame.text,
            )
        except Exception as exc:
            if not is_store_error(exc):
                raise
            metrics.REDIS_ERRORS.inc()
            log.warning("chat not posted, redis unavailable: %s", exc)
            raise Unavailable("the store is unavailable; try again") from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where steps 2-4 left one transfer: `settled` (shown and credited), `refunded`, or
    `failed` at `step` (still pending: a later attempt finishes it)."""

    transfer: Transfer
    result: str
    step: str = ""
    error: Exception | None = None


class _OncePerSecond:
    """A log line at most once a second per key, with how many were not written."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < 1.0:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        suffix = f" ({skipped} more like it not logged)" if skipped else ""
        log.warning(message + suffix, *args)


class GiftFinisher:
    """Steps 2-4 of the gifts this process debited, owned by the process: they run to the
    end whatever happens to the socket that sent the gift, and `drain` waits for them at
    shutdown. Transfers handed over are finished in batches (each step one round trip for
    the whole batch, each transfer's answer its own). Publishes go out one batch at a
    time, in the order the gifts were debited, so a room shows a sender's gifts in the
    order they were sent (and counts their combos right); the credits and settles after
    them overlap with the next batches. At most `max_waiting` transfers wait; beyond that
    one is left to the sweeper (it is pending in Redis, so nothing is lost; it is only
    finished later)."""

    def __init__(
        self,
        steps: GiftSteps,
        settings: Settings,
        *,
        max_waiting: int = 20_000,
        max_batch: int = 512,
        max_completing: int = 4,
        durability: Durability | None = None,
    ) -> None:
        self._steps = steps
        self._settings = settings
        self._durability = durability
        self._waiting: deque[Transfer] = deque()
        self._max_waiting = max_waiting
        self._max_batch = max_batch
        self._completing: set[asyncio.Task[list[Outcome]]] = set()
        self._room_to_complete = asyncio.Semaphore(max_completing)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._publishing = False
        self._log = _OncePerSecond()

    def hand_over(self, transfer: Transfer) -> None:
        """Finish `transfer` soon. Never waits."""
        if len(self._waiting) >= self._max_waiting:
            metrics.GIFT_STEPS_DEFERRED.inc()
            return
        self._waiting.append(transfer)
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Publish batch after batch while transfers wait, and complete each (credit or
        refund, settle) beside the next ones, until cancelled; batches still running then
        are cancelled too (their transfers stay pending, for the sweeper)."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._waiting:
                    n = min(self._max_batch, len(self._waiting))
                    batch = [self._waiting.popleft() for _ in range(n)]
                    self._publishing = True
                    try:
                        published = await self._publish(batch)
                        reraise_lost_cancellation()
                        await self._room_to_complete.acquire()
                    finally:
                        self._publishing = False
                    task = asyncio.create_task(self._complete(*published), name="gift-steps")
                    self._completing.add(task)
                    task.add_done_callback(self._completed)
                self._check_idle()
        finally:
            for task in list(self._completing):
                task.cancel()

    def _completed(self, task: asyncio.Task[list[Outcome]]) -> None:
        self._completing.discard(task)
        self._room_to_complete.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("gift steps failed unexpectedly", exc_info=exc)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._waiting and not self._completing and not self._publishing:
            self._idle.set()

    async def drain(self, *, timeout_s: float) -> bool:
        """Wait until every transfer handed over has been through its steps (True), or
        `timeout_s` passed (False: what is left stays pending, for the sweeper)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def finish(self, transfers: Sequence[Transfer]) -> list[Outcome]:
        """Steps 2-4 for each transfer on its own, in order: publish; then credit (shown)
        or refund (refused); then settle (credited). A transfer whose step fails stays
        pending and is reported as `failed`; the others go on. Idempotent."""
        return await self._complete(*await self._publish(transfers))

    async def _publish(
        self, transfers: Sequence[Transfer]
    ) -> tuple[Sequence[Transfer], list[Outcome | None], list[int], list[int]]:
        """Step 3 for each transfer: which were shown, which refused (the rest failed)."""
        outcomes: list[Outcome | None] = [None] * len(transfers)
        shown: list[int] = []
        refused: list[int] = []
        ready = await self._debits_durable(transfers, outcomes)
        decisions = await self._steps.publish([transfers[i] for i in ready])
        for i, decision in zip(ready, decisions, strict=True):
            if isinstance(decision, Exception):
                outcomes[i] = self._failed(transfers[i], "publish", decision)
            elif decision is Decision.SHOWN:
                shown.append(i)
            else:
                refused.append(i)
        return transfers, outcomes, shown, refused

    async def _debits_durable(
        self, transfers: Sequence[Transfer], outcomes: list[Outcome | None]
    ) -> list[int]:
        """Under GS_ACK_DURABILITY, a gift is shown (or refunded) only once its debit is as
        durable as its ack: a debit that a failover then loses must not leave a gift
        shown and credited behind it. The ones not confirmed stay pending (failed at
        `durable`): the sweeper looks again, if the debit is still there."""
        everyone = list(range(len(transfers)))
        if not transfers or self._durability is None or not self._durability.level.waits:
            return everyone
        buckets = self._settings.wallet_buckets
        tags = {i: UserKeys.of(transfers[i].sender_id, buckets).tag for i in everyone}
        distinct = sorted(set(tags.values()))
        durability = self._durability
        answers = await asyncio.gather(
            *(durability.confirm(tag) for tag in distinct), return_exceptions=True
        )
        failed = {tag: a for tag, a in zip(distinct, answers, strict=True) if a is not None}
        for answer in failed.values():
            if not isinstance(answer, Exception):
                raise answer  # cancelled: what is left stays pending
        ready = []
        for i in everyone:
            error = failed.get(tags[i])
            if isinstance(error, Exception):
                outcomes[i] = self._failed(transfers[i], "durable", error)
            else:
                ready.append(i)
        return ready

    async def _complete(
        self,
        transfers: Sequence[Transfer],
        outcomes: list[Outcome | None],
        shown: list[int],
        refused: list[int],
    ) -> list[Outcome]:
        """Steps 2 (credit) or 2'+4 (refund), then 4 (settle), after `_publish`."""
        credits, refunds = await self._steps.credit_or_refund(
            [transfers[i] for i in shown], [transfers[i] for i in refused]
        )
        credited: list[int] = []
        for i, done in zip(shown, credits, strict=True):
            if isinstance(done, Exception):
                outcomes[i] = self._failed(transfers[i], "credit", done)
                continue
            if done:
                metrics.DIAMONDS_CREDITED.inc(
                    economy.diamonds_for(transfers[i].coins, self._settings.diamonds_per_coin)
                )
            credited.append(i)
        for i, done in zip(refused, refunds, strict=True):
            if isinstance(done, Exception):
                outcomes[i] = self._failed(transfers[i], "refund", done)
                continue
            if done:
                metrics.GIFTS_REFUNDED.inc()
                metrics.COINS_REFUNDED.inc(transfers[i].coins)
            outcomes[i] = Outcome(transfers[i], "refunded")
        credited = await self._durable(transfers, outcomes, credited)
        settles = await self._steps.settle([transfers[i] for i in credited])
        for i, error in zip(credited, settles, strict=True):
            if error is not None:
                outcomes[i] = self._failed(transfers[i], "settle", error)
            else:
                outcomes[i] = Outcome(transfers[i], "settled")
        return [o for o in outcomes if o is not None]

    async def _durable(
        self, transfers: Sequence[Transfer], outcomes: list[Outcome | None], credited: list[int]
    ) -> list[int]:
        """Under GS_ACK_DURABILITY, a transfer is settled only once its publish and its
        credit are as durable as its debit was: a failover that lost them then finds it
        still pending, and the sweeper shows and credits it again. The ones not confirmed
        stay pending (failed at `durable`)."""
        if not credited or self._durability is None or not self._durability.level.waits:
            return credited
        buckets = self._settings.wallet_buckets
        tags = {RoomKeys(transfers[i].room_id).tag for i in credited}
        tags |= {UserKeys.of(transfers[i].creator_id, buckets).tag for i in credited}
        try:
            await self._durability.confirm_all(sorted(tags))
        except Exception as exc:  # noqa: BLE001 - NotDurable or the store: they stay pending
            for i in credited:
                outcomes[i] = self._failed(transfers[i], "durable", exc)
            return []
        return credited

    def _failed(self, transfer: Transfer, step: str, error: Exception) -> Outcome:
        metrics.GIFT_STEP_FAILURES.labels(step=step).inc()
        self._log.warning(
            step,
            "gift %s: %s failed (%s); it stays pending, to be finished later",
            transfer.transfer_id,
            step,
            error,
        )
        return Outcome(transfer, "failed", step, error)


class GiftSweeper:
    """Finishes the transfers left pending longer than `sweep_min_age_ms` (a process that
    died between steps, a Redis that half-failed), at start and every `sweep_interval_s`.
    Safe in every process at once. Each transfer on its own: one that keeps failing is
    retried with a growing backoff (counted in /metrics, logged) and never holds up the
    others."""

    def __init__(self, steps: GiftSteps, finisher: GiftFinisher, settings: Settings) -> None:
        self._steps = steps
        self._finisher = finisher
        self._settings = settings
        # transfer id -> (failures so far, monotonic time before which it is not retried)
        self._backoff: dict[str, tuple[int, float]] = {}

    async def sweep(self, *, min_age_ms: int | None = None) -> list[Outcome]:
        """One round: every pending transfer old enough and not backing off, finished.
        Returns their outcomes."""
        min_age = self._settings.sweep_min_age_ms if min_age_ms is None else min_age_ms
        pending = await self._steps.pending()
        metrics.PENDING_TRANSFERS.set(len(pending))
        metrics.PENDING_OLDEST_SECONDS.set(max((age for _, age in pending), default=0) / 1000)
        ids = {t.transfer_id for t, _ in pending}
        for transfer_id in list(self._backoff):
            if transfer_id not in ids:
                del self._backoff[transfer_id]
        now = time.monotonic()
        due = [
            t
            for t, age in pending
            if age >= min_age and self._backoff.get(t.transfer_id, (0, 0.0))[1] <= now
        ]
        outcomes: list[Outcome] = []
        for start in range(0, len(due), 512):
            outcomes.extend(await self._finisher.finish(due[start : start + 512]))
        for outcome in outcomes:
            transfer_id = outcome.transfer.transfer_id
            if outcome.result == "failed":
                failures = self._backoff.get(transfer_id, (0, 0.0))[0] + 1
                delay = min(60.0, self._settings.sweep_interval_s * 2 ** (failures - 1))
                self._backoff[transfer_id] = (failures, now + delay)
            else:
                self._backoff.pop(transfer_id, None)
                metrics.SWEPT_TRANSFERS.labels(result=outcome.result).inc()
        return outcomes

    async def run(self, *, interval_s: float | None = None) -> None:
        """Sweep at once and then every `interval_s` until cancelled; a round that fails
        as a whole (Redis away) is logged and the next one tries again."""
        interval = self._settings.sweep_interval_s if interval_s is None else interval_s
        while True:
            try:
                outcomes = await self.sweep()
                finished = sum(1 for o in outcomes if o.result != "failed")
                if finished:
                    log.info("sweeper finished %d pending gift transfers", finished)
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive Redis outages
                log.warning("sweeper round failed: %s", exc)
            reraise_lost_cancellation()
            await asyncio.sleep(interval)


async def run_gift_steps(commands: RoomCommands) -> None:
    """The finisher and the sweeper of `commands`, until cancelled."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(commands.finisher.run(), name="gift-finisher")
        tg.create_task(commands.sweeper.run(), name="gift-sweeper")
