"""The audit: checks the conservation rules of DESIGN section 1 over the whole store.

`python -m server.audit [--redis-url URL]` prints what it checked and every breach. Exit
codes: 0 the rules hold, 1 a breach, 2 it could not check (Redis unreachable, no URL).
Run it at a quiet moment: gifts in flight (pending transfers) are counted and reported,
not taken for breaches, unless one has been pending longer than `--stuck-after-s`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from server.economy import diamonds_for
from server.settings import Settings, SettingsError
from server.store.connection import Client, connect
from server.store.survey import WALLET_FIELDS, StoreSurvey

STUCK_AFTER_S = 300.0


@dataclass
class AuditReport:
    users: int = 0
    rooms: int = 0
    ledger_entries: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    gifts: int = 0
    gifts_refunded: int = 0
    gifts_not_checkable: int = 0
    pending_transfers: int = 0
    pending_coins: int = 0
    pending_cashouts: int = 0
    breaches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches

    def lines(self) -> list[str]:
        t = self.totals
        out = [
            f"users: {self.users}, rooms: {self.rooms}, ledger entries: {self.ledger_entries}",
            f"coins: bought {t.get('bought', 0)} = held {t.get('coins', 0)} "
            f"+ spent {t.get('spent', 0)} (net of refunds)",
            f"diamonds: credited {t.get('earned', 0)} = held {t.get('diamonds', 0)} "
            f"+ locked {t.get('locked', 0)} + paid out {t.get('paid_out', 0)}",
            f"gifts: {self.gifts} debited, {self.gifts_refunded} refunded; each shown once and "
            f"credited once ({self.gifts_not_checkable} older than their room's history)",
            f"gifts in flight: {self.pending_transfers} ({self.pending_coins} coins); "
            f"cash-outs pending: {self.pending_cashouts}",
            f"room gift totals: {t.get('room_gift_coins', 0)} coins",
        ]
        if self.breaches:
            out.append(f"BREACHES ({len(self.breaches)}):")
            out.extend(f"  - {b}" for b in self.breaches[:100])
            if len(self.breaches) > 100:
                out.append(f"  … and {len(self.breaches) - 100} more")
        else:
            out.append("audit OK: no coin or diamond was created or lost")
        return out


@dataclass(frozen=True, slots=True)
class _Sent:
    sender_id: str
    room_id: str
    coins: int
    ts: int


async def audit(
    client: Client, settings: Settings, *, stuck_after_s: float = STUCK_AFTER_S
) -> AuditReport:
    """Check every wallet, its ledger, every gift, the pending transfers and the rooms.

    Per user: bought = coins + spent; earned = diamonds + locked + paid_out; no balance
    negative; the ledger's deltas add up to the balances. Per gift debited (gift_sent),
    unless still pending: refunded at most once, and then never shown nor credited; else
    credited exactly once and, while its room's history still holds it, shown there
    exactly once. No diamonds credited and no gift shown for a gift never debited. Over
    the store: spent coins × DIAMONDS_PER_COIN = diamonds credited + diamonds of gifts in
    flight; the rooms' gift totals = coins spent − coins in flight not yet shown. A
    transfer pending longer than `stuck_after_s` is a breach.
    """
    survey = StoreSurvey(client, settings)
    # What is in flight is read before the ledgers and again after them: a gift that
    # finishes while the audit reads must not look half done. (The store-wide sums still
    # want a quiet moment.)
    pending = await survey.pending()
    report = AuditReport()
    totals = dict.fromkeys(WALLET_FIELDS, 0)
    sent: dict[str, _Sent] = {}
    received: Counter[str] = Counter()
    refunded: Counter[str] = Counter()
    async for wallet in survey.wallets():
        user_id, w = wallet.user_id, wallet.balances
        report.users += 1
        report.ledger_entries += len(wallet.ledger)
        for f in WALLET_FIELDS:
            totals[f] += w[f]
            if w[f] < 0:
                report.breaches.append(f"{user_id}: {f} is negative ({w[f]})")
        if w["bought"] != w["coins"] + w["spent"]:
            report.breaches.append(
                f"{user_id}: bought {w['bought']} != coins {w['coins']} + spent {w['spent']}"
            )
        if w["earned"] != w["diamonds"] + w["locked"] + w["paid_out"]:
            report.breaches.append(
                f"{user_id}: earned {w['earned']} != diamonds {w['diamonds']} + locked "
                f"{w['locked']} + paid out {w['paid_out']}"
            )
        sums = {"coins": 0, "diamonds": 0, "locked": 0}
        for entry in wallet.ledger:
            for name in sums:
                sums[name] += int(entry.get(name, 0))
            kind, ref = entry.get("kind"), entry.get("ref", "")
            if kind == "gift_sent":
                if ref in sent:
                    report.breaches.append(f"gift {ref}: debited twice")
                coins, ts = -int(entry["coins"]), int(entry.get("ts", 0))
                sent[ref] = _Sent(user_id, entry.get("room", ""), coins, ts)
            elif kind == "gift_received":
                received[ref] += 1
            elif kind == "gift_refunded":
                refunded[ref] += 1
        for name, total in sums.items():
            if total != w[name]:
                report.breaches.append(f"{user_id}: ledger {name} sum {total} != balance {w[name]}")
    report.totals = totals

    in_flight = {p.transfer.transfer_id for p in pending}
    in_flight |= {p.transfer.transfer_id for p in await survey.pending()}
    pending_diamonds = 0
    unshown_coins = 0
    for p in pending:
        report.pending_transfers += 1
        report.pending_coins += p.transfer.coins
        if not p.credited:
            pending_diamonds += diamonds_for(p.transfer.coins, settings.diamonds_per_coin)
        if p.decision != "shown":
            unshown_coins += p.transfer.coins
        if p.age_ms > stuck_after_s * 1000:
            report.breaches.append(
                f"gift {p.transfer.transfer_id}: pending for {p.age_ms / 1000:.0f} s "
                f"(steps left: {_steps_left(p.credited, p.decision)})"
            )
    report.pending_cashouts = await survey.cashouts_due()

    shown: Counter[str] = Counter()
    history_from: dict[str, int | None] = {}
    room_gift_coins = 0
    async for room in survey.rooms():
        report.rooms += 1
        room_gift_coins += room.gift_coins
        shown.update(room.shown)
        history_from[room.room_id] = room.trimmed_before_ms
    totals["room_gift_coins"] = room_gift_coins

    report.gifts = len(sent)
    for ref, gift in sent.items():
        if ref in in_flight:
            continue
        if refunded[ref]:
            report.gifts_refunded += 1
            if refunded[ref] > 1:
                report.breaches.append(f"gift {ref}: refunded {refunded[ref]} times")
            if received[ref] or shown[ref]:
                report.breaches.append(
                    f"gift {ref}: refunded, yet credited {received[ref]} and shown "
                    f"{shown[ref]} times"
                )
            continue
        if received[ref] != 1:
            report.breaches.append(f"gift {ref}: credited {received[ref]} times, not once")
        trimmed_before = history_from.get(gift.room_id)
        if not gift.room_id:
            report.gifts_not_checkable += 1  # debited before its ledger entry named its room
        elif gift.room_id not in history_from:
            report.breaches.append(f"gift {ref}: its room {gift.room_id!r} does not exist")
        elif trimmed_before is not None and gift.ts <= trimmed_before:
            report.gifts_not_checkable += 1
            if shown[ref] > 1:
                report.breaches.append(f"gift {ref}: shown {shown[ref]} times")
        elif shown[ref] != 1:
            report.breaches.append(
                f"gift {ref}: shown {shown[ref]} times in room {gift.room_id}, not once"
            )
    for ref, n in received.items():
        if ref not in sent:
            report.breaches.append(f"gift {ref}: {n} credit(s) for a gift never debited")
    for ref, n in shown.items():
        if ref not in sent:
            report.breaches.append(f"gift {ref}: shown {n} time(s), never debited")

    credited_expected = diamonds_for(totals["spent"], settings.diamonds_per_coin)
    if credited_expected != totals["earned"] + pending_diamonds:
        report.breaches.append(
            f"diamonds credited {totals['earned']} + in flight {pending_diamonds} != coins spent "
            f"{totals['spent']} x {settings.diamonds_per_coin}"
        )
    if room_gift_coins != totals["spent"] - unshown_coins:
        report.breaches.append(
            f"rooms show {room_gift_coins} coins of gifts, but {totals['spent']} were spent with "
            f"{unshown_coins} not yet shown"
        )
    return report


def _steps_left(credited: bool, decision: str) -> str:
    if decision == "refused":
        return "refund"
    left = [] if decision == "shown" else ["publish"]
    left += [] if credited else ["credit"]
    return ", ".join([*left, "settle"])


async def _main(settings: Settings, url: str | None, stuck_after_s: float) -> int:
    client = connect(settings, url)
    try:
        report = await audit(client, settings, stuck_after_s=stuck_after_s)
    except (RedisError, OSError) as exc:
        where = url or ",".join(settings.redis_cluster_urls)
        print(f"audit: could not check: Redis at {where} is unreachable ({exc})", file=sys.stderr)
        return 2
    finally:
        await client.aclose()
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.audit",
        description="Check that no coin or diamond was created or lost, and that every gift "
        "was shown and credited once or refunded. Exit 0: holds; 1: a breach; 2: could "
        "not check.",
    )
    parser.add_argument("--redis-url", help="the store to audit (default: REDIS_URL)")
    parser.add_argument(
        "--stuck-after-s",
        type=float,
        default=STUCK_AFTER_S,
        help="a gift pending longer than this is a breach (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    url = args.redis_url or settings.redis_url
    if url is None and not settings.redis_cluster_urls:
        print("audit: give --redis-url or set REDIS_URL", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(settings, url, args.stuck_after_s))
    except ValueError as exc:  # a malformed URL
        print(f"audit: could not check: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
