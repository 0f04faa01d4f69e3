"""The audit: checks the conservation rules of DESIGN section 1 over the whole store.

`python -m server.audit [--redis-url URL]` prints what it checked and every breach, and
exits 1 on a breach. Run it at a quiet moment: gifts in flight (pending transfers) are
counted and reported, not treated as breaches.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.economy import diamonds_for
from server.settings import Settings, SettingsError
from server.store.answers import fields
from server.store.connection import Client, connect
from server.store.keys import RoomKeys, UserKeys

WALLET_FIELDS = ("coins", "diamonds", "locked", "bought", "spent", "earned", "paid_out")


@dataclass
class AuditReport:
    users: int = 0
    rooms: int = 0
    ledger_entries: int = 0
    totals: dict[str, int] = field(default_factory=dict)
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
            f"+ spent {t.get('spent', 0)}",
            f"diamonds: credited {t.get('earned', 0)} = held {t.get('diamonds', 0)} "
            f"+ locked {t.get('locked', 0)} + paid out {t.get('paid_out', 0)}",
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


async def _scan(client: Client, pattern: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=pattern, count=1000)]


def _ledger_sums(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> dict[str, int]:
    sums = {"coins": 0, "diamonds": 0, "locked": 0}
    for _, raw in entries:
        for name in sums:
            value = raw.get(name.encode())
            if value is not None:
                sums[name] += int(value)
    return sums


async def audit(client: Client, settings: Settings) -> AuditReport:
    """Check every wallet, its ledger, the pending transfers and the rooms' gift totals.

    Per user: bought = coins + spent; earned = diamonds + locked + paid_out; no balance
    negative; the ledger's deltas add up to the balances. Over the store: spent coins ×
    DIAMONDS_PER_COIN = diamonds credited + diamonds of gifts still in flight; the rooms'
    gift totals = coins spent − coins in flight (every gift shown exactly once).
    """
    report = AuditReport()
    totals = dict.fromkeys(WALLET_FIELDS, 0)
    for key in await _scan(client, "gs:{w*}:wallet:*"):
        name = key.decode()
        user_id = name.rsplit(":", 1)[1]
        raw = fields(await client.hgetall(key))
        w = {f: int(raw.get(f, 0)) for f in WALLET_FIELDS}
        report.users += 1
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
        entries = await client.xrange(name.replace(":wallet:", ":ledger:"))
        report.ledger_entries += len(entries)
        sums = _ledger_sums(entries)
        for ledger_field, wallet_field in (
            ("coins", "coins"),
            ("diamonds", "diamonds"),
            ("locked", "locked"),
        ):
            if sums[ledger_field] != w[wallet_field]:
                report.breaches.append(
                    f"{user_id}: ledger {ledger_field} sum {sums[ledger_field]} != "
                    f"balance {w[wallet_field]}"
                )
    # A transfer still pending may have been credited or published already (a crash
    # between steps): its markers tell, so the audit holds at any moment.
    pending_diamonds = 0
    unpublished_coins = 0
    for key in await _scan(client, "gs:{w*}:pending"):
        for raw_transfer in (await client.hgetall(key)).values():
            transfer: dict[str, Any] = orjson.loads(raw_transfer)
            coins = int(transfer["p"])
            report.pending_transfers += 1
            report.pending_coins += coins
            creator = UserKeys.of(transfer["c"], settings.wallet_buckets)
            if not await client.exists(creator.credited(transfer["t"])):
                pending_diamonds += diamonds_for(coins, settings.diamonds_per_coin)
            if not await client.exists(RoomKeys(transfer["r"]).done(transfer["t"])):
                unpublished_coins += coins
    for key in await _scan(client, "gs:{w*}:cashouts_due"):
        report.pending_cashouts += int(await client.zcard(key))
    credited_expected = diamonds_for(totals["spent"], settings.diamonds_per_coin)
    if credited_expected != totals["earned"] + pending_diamonds:
        report.breaches.append(
            f"diamonds credited {totals['earned']} + in flight {pending_diamonds} != coins spent "
            f"{totals['spent']} x {settings.diamonds_per_coin}"
        )
    room_gift_coins = 0
    for key in await _scan(client, "gs:{r*}:room"):
        report.rooms += 1
        room_gift_coins += int(await client.hget(key, "gift_coins") or 0)
    totals["room_gift_coins"] = room_gift_coins
    if room_gift_coins != totals["spent"] - unpublished_coins:
        report.breaches.append(
            f"rooms show {room_gift_coins} coins of gifts, but {totals['spent']} were spent with "
            f"{unpublished_coins} not yet shown"
        )
    report.totals = totals
    return report


async def _main(settings: Settings, url: str | None) -> int:
    client = connect(settings, url)
    try:
        report = await audit(client, settings)
    finally:
        await client.aclose()
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.audit", description=__doc__)
    parser.add_argument("--redis-url", help="the store to audit (default: REDIS_URL)")
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
    return asyncio.run(_main(settings, url))


if __name__ == "__main__":
    sys.exit(main())
