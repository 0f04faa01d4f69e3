"""The gift saga (DESIGN section 3): debit, then credit + publish + settle, then the sweeper.

1. debit (sender's bucket): atomic, idempotent by (sender, request_id). Acks the sender
   (`debit`; the WebSocket acks before steps 2-4, as DESIGN section 3 says).
2. credit (creator's bucket): once per transfer id.
3. publish (room's tag): once per transfer id.
4. settle (sender's bucket): removes the pending transfer.
Steps 2-4 go in one pipelined round trip. If step 2 or 3 fails while step 4 went
through, the pending transfer is written back, so the sweeper finishes it: a crash or
an error between steps loses nothing and shows nothing twice.

The steps of concurrent gifts share round trips (`ScriptBatch`): the debits made in one
turn of the event loop go to Redis in one pipeline, and so do their credits, publishes
and settles. Each step is still its own script, atomic and idempotent on its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

from server import economy
from server.economy import Gift
from server.settings import Settings
from server.store.answers import decode_answer
from server.store.connection import Client, ScriptBatch, Scripts
from server.store.keys import RoomKeys, UserKeys, bucket_pending, bucket_tag
from server.store.wallets import body_hash, now_ms

log = logging.getLogger(__name__)

# Markers that make steps 2 and 3 happen once outlive any pending transfer by far.
MARKER_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class GiftOrder:
    sender_id: str
    sender_name: str
    room_id: str
    creator_id: str
    gift: Gift
    count: int
    request_id: str


@dataclass(frozen=True, slots=True)
class GiftReceipt:
    """Step 1's answer: the sender's balance after it. `complete` takes it on."""

    transfer_id: str
    coins: int
    replayed: bool
    sender_id: str = field(default="", compare=False, repr=False)
    # The transfer this debit recorded (None when it replayed an earlier one).
    transfer: dict[str, Any] | None = field(default=None, compare=False, repr=False)


class GiftSaga:
    def __init__(self, client: Client, scripts: Scripts, settings: Settings):
        self._r = client
        self._scripts = scripts
        self._settings = settings
        self._batch = ScriptBatch(client)

    def _user(self, user_id: str) -> UserKeys:
        return UserKeys.of(user_id, self._settings.wallet_buckets)

    async def send(self, order: GiftOrder) -> GiftReceipt:
        """The whole saga: `debit`, then `complete`."""
        receipt = await self.debit(order)
        await self.complete(receipt)
        return receipt

    async def debit(self, order: GiftOrder) -> GiftReceipt:
        """Step 1: debit the sender (the sender may be acked on its answer). Idempotent
        by (sender, request_id): a retry is never charged twice. Raises a `Refusal`
        (nothing written) when refused."""
        total = economy.gift_total(order.gift, order.count)
        k = self._user(order.sender_id)
        now = now_ms()
        day, month = economy.spending_periods(dt.datetime.fromtimestamp(now / 1000, dt.UTC))
        transfer_id = "g" + secrets.token_hex(8)
        transfer = {
            "t": transfer_id,
            "s": order.sender_id,
            "n": order.sender_name,
            "r": order.room_id,
            "c": order.creator_id,
            "g": order.gift.id,
            "k": order.count,
            "p": total,
            "ts": now,
        }
        answer = decode_answer(
            await self._batch.call(
                self._scripts.debit_gift,
                keys=[
                    k.profile,
                    k.wallet,
                    k.ledger,
                    k.idempotency("gift", order.request_id),
                    k.pending,
                    k.spent("d", day),
                    k.spent("m", month),
                ],
                args=[
                    body_hash(order.gift.id, order.count, order.room_id),
                    transfer_id,
                    total,
                    now,
                    self._settings.idempotency_ttl_s,
                    orjson.dumps(transfer),
                ],
            )
        )
        replayed = bool(answer["replayed"])
        return GiftReceipt(
            str(answer["transfer_id"]),
            int(answer["coins"]),
            replayed,
            sender_id=order.sender_id,
            transfer=None if replayed else transfer,
        )

    async def complete(self, receipt: GiftReceipt) -> None:
        """Steps 2-4 after `debit`: for a replay, whatever the first attempt (which may
        have died) left pending. Idempotent; what fails here the sweeper finishes."""
        transfer = receipt.transfer
        if transfer is None:
            raw = await self._r.hget(self._user(receipt.sender_id).pending, receipt.transfer_id)
            if raw is None:
                return
            transfer = orjson.loads(raw)
        await self.finish(transfer)

    async def finish(self, transfer: dict[str, Any]) -> None:
        """Steps 2-4 for one pending transfer, in one pipelined round trip. Idempotent."""
        creator = self._user(transfer["c"])
        sender = self._user(transfer["s"])
        room = RoomKeys(transfer["r"])
        now = now_ms()
        diamonds = economy.diamonds_for(int(transfer["p"]), self._settings.diamonds_per_coin)
        event = orjson.dumps(
            {
                "ts": now,
                "kind": "gift",
                "from": {"user_id": transfer["s"], "name": transfer["n"]},
                "gift_id": transfer["g"],
                "count": transfer["k"],
                "coins": transfer["p"],
            }
        )
        batch = self._batch
        steps = [
            batch.call(
                self._scripts.credit_gift,
                keys=[creator.wallet, creator.ledger, creator.credited(transfer["t"])],
                args=[transfer["t"], diamonds, now, MARKER_TTL_S],
            ),
            batch.call(
                self._scripts.publish_gift,
                keys=[
                    room.room,
                    room.events,
                    room.top,
                    room.names,
                    room.combo,
                    room.done(transfer["t"]),
                ],
                args=[
                    transfer["t"],
                    transfer["s"],
                    transfer["n"],
                    transfer["g"],
                    transfer["k"],
                    transfer["p"],
                    now,
                    self._settings.combo_gap_ms,
                    self._settings.history_events,
                    MARKER_TTL_S,
                    event,
                    room.channel,
                ],
            ),
            batch.call(self._scripts.settle_gift, keys=[sender.pending], args=[transfer["t"]]),
        ]
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled: the sweeper finishes what this did not
        failed = [r for r in results[:2] if isinstance(r, Exception)]
        if failed:
            if not isinstance(results[2], Exception):
                await self._r.hset(sender.pending, transfer["t"], orjson.dumps(transfer))
            raise failed[0]
        if isinstance(results[2], Exception):
            raise results[2]

    async def sweep(self, *, min_age_ms: int | None = None) -> int:
        """Finish every pending transfer older than `min_age_ms` in every bucket. Safe to
        run in every process at once. Returns how many it finished."""
        min_age = self._settings.sweep_min_age_ms if min_age_ms is None else min_age_ms
        keys = [bucket_pending(bucket_tag(b)) for b in range(self._settings.wallet_buckets)]
        if not await self._r.exists(*keys):
            return 0  # the usual case when idle: one command, not one per bucket
        async with self._r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            pendings = await pipe.execute()
        cutoff = now_ms() - min_age
        finished = 0
        for pending in pendings:
            for raw in pending.values():
                transfer = orjson.loads(raw)
                if int(transfer["ts"]) <= cutoff:
                    await self.finish(transfer)
                    finished += 1
        return finished

    async def run_sweeper(self, *, interval_s: float | None = None) -> None:
        """Sweep at once and then every `interval_s` until cancelled; errors (Redis down)
        are logged and the next round tries again."""
        interval = self._settings.sweep_interval_s if interval_s is None else interval_s
        while True:
            try:
                n = await self.sweep()
                if n:
                    log.info("sweeper finished %d pending gift transfers", n)
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive Redis outages
                log.warning("sweeper round failed: %s", exc)
            await asyncio.sleep(interval)
