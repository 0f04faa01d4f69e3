"""The gift saga's steps (DESIGN section 3), one Lua script each, and what they record.

1. debit (sender's bucket): atomic, idempotent by (sender, request_id); checks standing,
   the gift rate limit, the spending cap and the balance; records the `Transfer` in the
   bucket's pending hash. The sender may be acked on its answer.
3. publish (room's tag): decides once per transfer id, for good, whether the gift is
   shown (numbered, kept in the history, published) or refused (the room is no longer
   live).
2. credit (creator's bucket), for a shown gift: once per transfer id.
2'+4. refund (sender's bucket), for a refused gift: the coins back and the pending
   transfer removed, in one step, once.
4. settle (sender's bucket): the pending transfer removed, once its credit is done.

Every step checks everything before it writes anything, so a step that fails leaves
nothing behind, and the transfer stays pending until a later attempt finishes it (the
order of the steps is kept by `server.room_commands`, which runs them). Steps 2-4 take
many transfers at once, one round trip each, and answer for each transfer on its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from server import economy
from server.settings import Settings
from server.store.answers import answer, text
from server.store.connection import (
    Call,
    Client,
    ScriptBatch,
    Scripts,
    command,
    publish_command,
    run_pipelined,
    script_call,
)
from server.store.keys import RoomKeys, UserKeys, bucket_pending, bucket_tag
from server.store.wallets import body_hash, now_ms

# Markers that make steps 2 and 3 happen once outlive any pending transfer by far.
MARKER_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Transfer:
    """A debited gift on its way through steps 2-4, as kept in the pending hash."""

    transfer_id: str
    sender_id: str
    sender_name: str
    room_id: str
    creator_id: str
    gift_id: str
    count: int
    coins: int
    created_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Transfer:
        d = orjson.loads(raw)
        if "t" in d:  # recorded before the fields had names
            return cls(d["t"], d["s"], d["n"], d["r"], d["c"], d["g"], d["k"], d["p"], d["ts"])
        return cls(**d)

    @property
    def periods(self) -> tuple[str, str]:
        """The UTC day and month its coins count towards for the spending cap."""
        return _periods_of_second(self.created_ms // 1000)


@functools.lru_cache(maxsize=8)
def _periods_of_second(second: int) -> tuple[str, str]:
    # Days and months begin on whole seconds: formatted once a second, not once a gift.
    return economy.spending_periods(dt.datetime.fromtimestamp(second, dt.UTC))


@dataclass(frozen=True, slots=True)
class Receipt:
    """Step 1's answer: the sender's balance after it, and whether it replayed an earlier
    attempt (then `transfer_id` is that attempt's)."""

    transfer_id: str
    coins: int
    replayed: bool


class Decision(Enum):
    """What step 3 decided for a transfer, once and for good."""

    SHOWN = "shown"
    REFUSED = "refused"


class GiftSteps:
    def __init__(self, client: Client, scripts: Scripts, settings: Settings):
        self._r = client
        self._scripts = scripts
        self._settings = settings
        self._batch = ScriptBatch(client, scripts)
        self.publish_command = publish_command(client)

    def _user(self, user_id: str) -> UserKeys:
        return UserKeys.of(user_id, self._settings.wallet_buckets)

    # --- step 1 ------------------------------------------------------------------------

    def debit(self, transfer: Transfer, request_id: str) -> asyncio.Future[Any]:
        """Step 1 for `transfer`, in the next shared round trip (made now: a caller that is
        cancelled does not take it back). The future's result is the script's raw answer:
        `receipt` reads it."""
        s = self._settings
        k = self._user(transfer.sender_id)
        day, month = transfer.periods
        t = transfer
        params = (
            f"{body_hash(t.gift_id, t.count, t.room_id)}|{s.idempotency_ttl_s}"
            f"|{s.gift_rate_per_s}|{s.gift_burst}|{t.transfer_id}|{t.coins}|{t.created_ms}"
            f"|{t.count}|{t.gift_id}|{t.room_id}"
        )
        return self._batch.call(
            script_call(
                self._scripts.debit_gift,
                keys=(
                    k.profile,
                    k.wallet,
                    k.ledger,
                    k.idempotency("gift", request_id),
                    k.pending,
                    k.spent("d", day),
                    k.spent("m", month),
                ),
                args=(transfer.to_json(), params),
            )
        )

    @staticmethod
    def receipt(raw: Any) -> Receipt:
        """Step 1's answer as a `Receipt`; its refusal (nothing written) is raised."""
        replayed, transfer_id, coins = answer(raw)
        return Receipt(text(transfer_id), int(coins), bool(replayed))

    # --- steps 2-4, for many transfers at once -------------------------------------------

    async def _run(self, calls: Sequence[Call]) -> list[Any]:
        try:
            return await run_pipelined(self._r, self._scripts, calls)
        except Exception as exc:  # noqa: BLE001 - the round trip failed for every call
            return [exc] * len(calls)

    async def publish(self, transfers: Sequence[Transfer]) -> list[Decision | Exception]:
        """Step 3 for each transfer: shown or refused, decided once for good (an attempt
        that finds it decided gets the same answer); an exception where it could not be
        done now (nothing written)."""
        s = self._settings
        head = f"{s.combo_gap_ms}|{s.history_events}|{MARKER_TTL_S}|{self.publish_command}"
        now = now_ms()
        calls = []
        for t in transfers:
            room = RoomKeys(t.room_id)
            event = orjson.dumps(
                {
                    "ts": now,
                    "kind": "gift",
                    "from": {"user_id": t.sender_id, "name": t.sender_name},
                    "gift_id": t.gift_id,
                    "count": t.count,
                    "coins": t.coins,
                }
            )
            calls.append(
                script_call(
                    self._scripts.publish_gift,
                    keys=(
                        room.room,
                        room.events,
                        room.top,
                        room.names,
                        room.combo,
                        room.done(t.transfer_id),
                    ),
                    args=(
                        t.transfer_id,
                        event,
                        f"{head}|{t.sender_id}|{t.gift_id}|{t.count}|{t.coins}|{now}",
                        room.channel,
                        t.sender_name,
                    ),
                )
            )
        return [_decision(raw) for raw in await self._run(calls)]

    async def credit_or_refund(
        self, shown: Sequence[Transfer], refused: Sequence[Transfer]
    ) -> tuple[list[bool | Exception], list[bool | Exception]]:
        """Step 2 for each shown transfer (diamonds to the creator) and steps 2'+4 for
        each refused one (coins back to the sender, pending entry removed), in one round
        trip. Each is once per transfer id. For each: True where done now, False where
        done before, an exception where it could not be done now (nothing written)."""
        now = now_ms()
        calls = []
        for t in shown:
            creator = self._user(t.creator_id)
            diamonds = economy.diamonds_for(t.coins, self._settings.diamonds_per_coin)
            calls.append(
                script_call(
                    self._scripts.credit_gift,
                    keys=(creator.wallet, creator.ledger, creator.credited(t.transfer_id)),
                    args=(
                        f"{t.transfer_id}|{diamonds}|{now}|{MARKER_TTL_S}|{t.sender_id}"
                        f"|{t.room_id}",
                    ),
                )
            )
        for t in refused:
            sender = self._user(t.sender_id)
            day, month = t.periods
            calls.append(
                script_call(
                    self._scripts.refund_gift,
                    keys=(
                        sender.wallet,
                        sender.ledger,
                        sender.pending,
                        sender.spent("d", day),
                        sender.spent("m", month),
                    ),
                    args=(f"{t.transfer_id}|{now}",),
                )
            )
        results = [_done(raw) for raw in await self._run(calls)]
        return results[: len(shown)], results[len(shown) :]

    async def settle(self, transfers: Sequence[Transfer]) -> list[Exception | None]:
        """Step 4 for each transfer whose credit is done: its pending entry removed (an
        absent one is fine). None where done, an exception where not."""
        calls = [command("HDEL", self._user(t.sender_id).pending, t.transfer_id) for t in transfers]
        return [raw if isinstance(raw, Exception) else None for raw in await self._run(calls)]

    # --- what is pending ----------------------------------------------------------------

    async def pending(self) -> list[tuple[Transfer, int]]:
        """Every pending transfer in every bucket, with its age in ms."""
        return await pending_transfers(self._r, self._settings)


async def pending_transfers(client: Client, settings: Settings) -> list[tuple[Transfer, int]]:
    """Every pending transfer in every bucket, with its age in ms. Bucket by bucket would be
    a thousand round trips: one EXISTS first (the usual, idle answer), then one pipeline."""
    keys = [bucket_pending(bucket_tag(b)) for b in range(settings.wallet_buckets)]
    if not await client.exists(*keys):
        return []
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        pendings = await pipe.execute()
    now = now_ms()
    found = []
    for pending in pendings:
        for raw in pending.values():
            transfer = Transfer.from_json(raw)
            found.append((transfer, now - transfer.created_ms))
    return found


def _decision(raw: Any) -> Decision | Exception:
    try:
        _, decided, _ = answer(raw)
    except Exception as exc:  # noqa: BLE001 - the caller reports it, transfer by transfer
        return exc
    return Decision(text(decided))


def _done(raw: Any) -> bool | Exception:
    try:
        before = answer(raw)[0]
    except Exception as exc:  # noqa: BLE001 - the caller reports it, transfer by transfer
        return exc
    return not before
