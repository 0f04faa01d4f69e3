"""Read-only walks over the whole store, for the audit (`server.audit`): every wallet with
its ledger, every pending transfer with what its steps left, every room with its gift
history. Nothing here writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from server.settings import Settings
from server.store.answers import fields, text
from server.store.connection import Client
from server.store.gifts import Transfer, pending_transfers
from server.store.keys import (
    ALL_CASHOUTS_DUE,
    ALL_ROOMS,
    ALL_WALLETS,
    RoomKeys,
    UserKeys,
    room_id_of,
)

WALLET_FIELDS = ("coins", "diamonds", "locked", "bought", "spent", "earned", "paid_out")


@dataclass(frozen=True, slots=True)
class WalletRecord:
    user_id: str
    balances: dict[str, int]
    # The ledger, oldest first: each entry's fields as text.
    ledger: list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class PendingRecord:
    transfer: Transfer
    age_ms: int
    credited: bool
    # What step 3 decided: "shown", "refused", or "" (not yet).
    decision: str


@dataclass(frozen=True, slots=True)
class RoomRecord:
    room_id: str
    creator_id: str
    gift_coins: int
    # How many times each transfer id appears in the room's history.
    shown: dict[str, int]
    # The `ts` of the oldest event the capped history still holds, when older ones are
    # gone (its first event is not the room's first: trimmed by the cap, whatever cap the
    # server that wrote it had); else None: it holds every event since the room began.
    trimmed_before_ms: int | None


class StoreSurvey:
    def __init__(self, client: Client, settings: Settings) -> None:
        self._r = client
        self._settings = settings

    async def _scan(self, pattern: str) -> list[str]:
        return sorted({text(key) async for key in self._r.scan_iter(match=pattern, count=1000)})

    async def wallets(self) -> AsyncIterator[WalletRecord]:
        for key in await self._scan(ALL_WALLETS):
            k = UserKeys.from_wallet_key(key)
            raw = fields(await self._r.hgetall(key))
            balances = {f: int(raw.get(f, 0)) for f in WALLET_FIELDS}
            ledger = [fields(entry) for _, entry in await self._r.xrange(k.ledger)]
            yield WalletRecord(k.user_id, balances, ledger)

    async def pending(self) -> list[PendingRecord]:
        records = []
        for transfer, age in await pending_transfers(self._r, self._settings):
            creator = UserKeys.of(transfer.creator_id, self._settings.wallet_buckets)
            credited = bool(await self._r.exists(creator.credited(transfer.transfer_id)))
            decided = await self._r.get(RoomKeys(transfer.room_id).done(transfer.transfer_id))
            decision = "" if decided is None else text(decided)
            records.append(
                PendingRecord(transfer, age, credited, "shown" if decision == "1" else decision)
            )
        return records

    async def cashouts_due(self) -> int:
        return sum([int(await self._r.zcard(key)) for key in await self._scan(ALL_CASHOUTS_DUE)])

    async def rooms(self) -> AsyncIterator[RoomRecord]:
        for key in await self._scan(ALL_ROOMS):
            room_id = room_id_of(key)
            raw = fields(await self._r.hgetall(key))
            entries: list[tuple[Any, dict[Any, Any]]] = await self._r.xrange(
                RoomKeys(room_id).events
            )
            shown: dict[str, int] = {}
            for _, entry in entries:
                transfer_id = entry.get(b"t")
                if transfer_id is not None:
                    shown[text(transfer_id)] = shown.get(text(transfer_id), 0) + 1
            trimmed_before: int | None = None
            if entries and text(entries[0][0]) != "1-0":
                event: dict[str, Any] = orjson.loads(entries[0][1][b"e"])
                trimmed_before = int(event["ts"])
            yield RoomRecord(
                room_id,
                raw.get("creator_id", ""),
                int(raw.get("gift_coins", 0)),
                shown,
                trimmed_before,
            )
