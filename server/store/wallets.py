"""Users, wallets, the ledger and cash-outs.

Every method that moves money runs one Lua script (one atomic step) and is idempotent
by the key its docstring names. Refusals are raised as `Refusal` subclasses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from server import economy
from server.economy import Catalog, CoinPackage, PaymentOutcome
from server.errors import BadRequest, NotFound, Unauthorized
from server.settings import Settings
from server.store.answers import answer, fields, text
from server.store.connection import Client, Scripts
from server.store.keys import UserKeys, bucket_cashout, bucket_cashouts_due, bucket_tag

_STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def body_hash(*parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]


def check_idempotency_key(key: object, *, name: str = "idempotency_key") -> str:
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest(f"{name} must be 1 to 100 characters of letters, digits, _ . : -")
    return key


@dataclass(frozen=True, slots=True)
class Profile:
    user_id: str
    name: str
    born: dt.date
    region: str
    status: str
    verified: bool
    payout: dict[str, str] | None
    created_ms: int


class WalletStore:
    def __init__(self, client: Client, scripts: Scripts, settings: Settings, catalog: Catalog):
        self._r = client
        self._scripts = scripts
        self._settings = settings
        self._catalog = catalog

    def keys(self, user_id: str) -> UserKeys:
        return UserKeys.of(user_id, self._settings.wallet_buckets)

    # --- users ---------------------------------------------------------------

    async def create_user(self, *, name: str, born: dt.date, region: str) -> str:
        """Create a user with an empty wallet. Atomic (one MULTI on the user's tag)."""
        user_id = "u" + secrets.token_hex(8)
        k = self.keys(user_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(
                k.profile,
                mapping={
                    "name": name,
                    "birthdate": born.isoformat(),
                    "region": region,
                    "status": "active",
                    "verified": "0",
                    "created_ms": now_ms(),
                },
            )
            pipe.hset(
                k.wallet,
                mapping={
                    "coins": 0,
                    "diamonds": 0,
                    "locked": 0,
                    "bought": 0,
                    "spent": 0,
                    "earned": 0,
                    "paid_out": 0,
                },
            )
            await pipe.execute()
        return user_id

    async def profile(self, user_id: str) -> Profile:
        """The user's profile; `Unauthorized` if there is no such user (a token for a
        user that no longer exists is as good as no token)."""
        raw = fields(await self._r.hgetall(self.keys(user_id).profile))
        if not raw:
            raise Unauthorized("no such user")
        payout = orjson.loads(raw["payout"]) if raw.get("payout") else None
        return Profile(
            user_id=user_id,
            name=raw["name"],
            born=dt.date.fromisoformat(raw["birthdate"]),
            region=raw["region"],
            status=raw["status"],
            verified=raw.get("verified") == "1",
            payout=payout,
            created_ms=int(raw["created_ms"]),
        )

    async def set_status(self, user_id: str, status: str) -> None:
        """Operator action: `active` or `suspended`."""
        await self._r.hset(self.keys(user_id).profile, "status", status)

    async def verify_identity(self, user_id: str, *, legal_name: str, id_number: str) -> None:
        k = self.keys(user_id)
        digest = hashlib.sha256(id_number.encode()).hexdigest()
        await self._r.hset(
            k.profile, mapping={"verified": "1", "legal_name": legal_name, "id_digest": digest}
        )

    async def set_payout_method(self, user_id: str, method: dict[str, str]) -> None:
        await self._r.hset(self.keys(user_id).profile, "payout", orjson.dumps(method))

    # --- balances and history ---------------------------------------------------

    async def wallet(self, user_id: str) -> dict[str, Any]:
        raw = fields(await self._r.hgetall(self.keys(user_id).wallet))
        limit = None
        if raw.get("cap_period") and raw.get("cap_coins"):
            limit = {"period": raw["cap_period"], "coins": int(raw["cap_coins"])}
        return {
            "coins": int(raw.get("coins", 0)),
            "diamonds": int(raw.get("diamonds", 0)),
            "locked_diamonds": int(raw.get("locked", 0)),
            "spending_limit": limit,
        }

    async def transactions(
        self, user_id: str, *, limit: int, before: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Ledger entries newest first, `limit` of them from before the entry id `before`;
        returns the entries and the `before` for the next page (None at the end)."""
        if before is not None and not _STREAM_ID.fullmatch(before):
            raise BadRequest("before must be a transaction id from a previous page")
        top = "+" if before is None else f"({before}"
        rows = await self._r.xrevrange(self.keys(user_id).ledger, top, "-", count=limit + 1)
        entries = [ledger_entry(entry_id, raw) for entry_id, raw in rows[:limit]]
        more = len(rows) > limit
        return entries, (entries[-1]["id"] if more and entries else None)

    # --- money -----------------------------------------------------------------

    async def recharge(
        self,
        user_id: str,
        *,
        package: CoinPackage,
        card_number: str,
        outcome: PaymentOutcome,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """Buy `package`. Atomic; idempotent by (user, idempotency_key): the same key and
        body replays the first answer, another body raises `IdempotencyConflict`."""
        k = self.keys(user_id)
        recharge_id = "rc" + secrets.token_hex(8)
        replayed, recharge_id, coins, added, cents, package_id = answer(
            await self._scripts.recharge(
                keys=[k.profile, k.wallet, k.ledger, k.idempotency("recharge", idempotency_key)],
                args=[
                    f"{body_hash(package.id, card_number)}|{outcome.value}|{package.coins}"
                    f"|{package.price_cents}|{package.id}|{recharge_id}|{now_ms()}"
                    f"|{self._settings.idempotency_ttl_s}"
                ],
            )
        )
        return {
            "recharge_id": text(recharge_id),
            "coins": int(coins),
            "added": int(added),
            "price_cents": int(cents),
            "package_id": text(package_id),
            "replayed": bool(replayed),
        }

    async def set_spending_limit(self, user_id: str, period: str, coins: int | None) -> None:
        """Set (or with None remove) the cap. Atomic; setting it twice is the same as once."""
        k = self.keys(user_id)
        answer(
            await self._scripts.set_spending_limit(
                keys=[k.profile, k.wallet], args=[period, "" if coins is None else coins]
            )
        )

    async def request_cashout(
        self, user_id: str, *, diamonds: int, idempotency_key: str
    ) -> dict[str, Any]:
        """Lock `diamonds` for a payout. Atomic; idempotent by (user, idempotency_key).
        The rules that depend on stored state (standing, identity verified, payout method,
        daily limit, balance) are checked by the script, and only there."""
        k = self.keys(user_id)
        s = self._settings
        cashout_id = "co" + secrets.token_hex(8)
        now = now_ms()
        # The day the cash-out counts towards, from the same instant as its timestamps.
        day, _ = economy.spending_periods(dt.datetime.fromtimestamp(now / 1000, dt.UTC))
        replayed, cashout_id, amount, cents = answer(
            await self._scripts.request_cashout(
                keys=[
                    k.profile,
                    k.wallet,
                    k.ledger,
                    k.idempotency("cashout", idempotency_key),
                    k.cashout(cashout_id),
                    k.cashouts_due,
                    k.cashout_day(day),
                ],
                args=[
                    f"{body_hash(diamonds)}|{cashout_id}|{diamonds}|{economy.usd_cents_for(diamonds)}"
                    f"|{s.cashout_daily_limit_diamonds}|{now}|{now + s.payout_delay_ms}"
                    f"|{s.idempotency_ttl_s}|{day}|{user_id}"
                ],
            )
        )
        return {
            "cashout_id": text(cashout_id),
            "status": "pending",
            "diamonds": int(amount),
            "usd_cents": int(cents),
            "replayed": bool(replayed),
        }

    async def cashout(self, user_id: str, cashout_id: str) -> dict[str, Any]:
        if not re.fullmatch(r"co[0-9a-f]{16}", cashout_id):
            raise NotFound("no such cash-out")
        raw = fields(await self._r.hgetall(self.keys(user_id).cashout(cashout_id)))
        if not raw or raw.get("user_id") != user_id:
            raise NotFound("no such cash-out")
        return {
            "cashout_id": cashout_id,
            "status": raw["status"],
            "diamonds": int(raw["diamonds"]),
            "usd_cents": int(raw["usd_cents"]),
            "created_ms": int(raw["created_ms"]),
            "finished_ms": int(raw["finished_ms"]) if raw.get("finished_ms") else None,
        }

    async def finish_due_cashouts(self, *, now: int | None = None) -> int:
        """The simulated payout processor: settle or fail every cash-out whose delay has
        passed. Safe to run in every process at once (each finish is idempotent).
        Returns how many it finished."""
        now = now_ms() if now is None else now
        buckets = range(self._settings.wallet_buckets)
        keys = [bucket_cashouts_due(bucket_tag(b)) for b in buckets]
        if not await self._r.exists(*keys):
            return 0  # no cash-out waiting anywhere: one command, not one per bucket
        async with self._r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrangebyscore(key, 0, now, start=0, num=100)
            due_lists = await pipe.execute()
        finished = 0
        for b, due in zip(buckets, due_lists, strict=True):
            for raw_id in due:
                cashout_id = raw_id.decode()
                if await self._finish_cashout(bucket_tag(b), cashout_id, now):
                    finished += 1
        return finished

    async def _finish_cashout(self, tag: str, cashout_id: str, now: int) -> bool:
        key = bucket_cashout(tag, cashout_id)
        raw = fields(await self._r.hgetall(key))
        if not raw:
            await self._r.zrem(bucket_cashouts_due(tag), cashout_id)
            return False
        k = self.keys(raw["user_id"])
        method = orjson.loads(raw["payout"]) if raw.get("payout") else {}
        outcome = "settled" if economy.payout_succeeds(method) else "failed"
        answer(
            await self._scripts.finish_cashout(
                keys=[k.wallet, k.ledger, key, k.cashouts_due, k.cashout_day(raw.get("day", ""))],
                args=[f"{cashout_id}|{outcome}|{now}"],
            )
        )
        return True


_INT_FIELDS = (
    "coins",
    "diamonds",
    "locked",
    "coins_after",
    "diamonds_after",
    "locked_after",
    "price_cents",
    "ts",
)


def ledger_entry(entry_id: bytes | str, raw: dict[Any, Any]) -> dict[str, Any]:
    f = fields(raw)
    entry: dict[str, Any] = {"id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id}
    for name, value in f.items():
        entry[name] = int(value) if name in _INT_FIELDS else value
    entry.setdefault("locked", 0)
    return entry
