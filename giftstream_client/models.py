"""The REST API's answers as typed records (DESIGN section 4), each built by `from_json`
from the server's JSON body. Unknown fields are ignored, so a server that adds a field
does not break a client; a missing or mistyped field is a `ProtocolError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from giftstream_client.errors import ProtocolError

JsonObject = dict[str, Any]


def obj(value: Any, what: str = "the answer") -> JsonObject:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return value


def text(body: JsonObject, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ProtocolError(f"{name!r} is not a string in {sorted(body)}")
    return value


def whole(body: JsonObject, name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{name!r} is not a whole number in {sorted(body)}")
    return value


def maybe_whole(body: JsonObject, name: str) -> int | None:
    return None if body.get(name) is None else whole(body, name)


def items(body: JsonObject, name: str) -> list[JsonObject]:
    value = body.get(name)
    if not isinstance(value, list):
        raise ProtocolError(f"{name!r} is not a list")
    return [obj(item, name) for item in value]


@dataclass(frozen=True, slots=True)
class Account:
    """A signed-up user: its id and bearer token (and the name it signed up with)."""

    user_id: str
    token: str
    name: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True, slots=True)
class UserRef:
    user_id: str
    name: str

    @classmethod
    def from_json(cls, value: Any) -> UserRef:
        body = obj(value, "a user")
        return cls(text(body, "user_id"), text(body, "name"))


@dataclass(frozen=True, slots=True)
class Gift:
    """One gift of the catalog."""

    id: str
    name: str
    coins: int
    tier: str

    @classmethod
    def from_json(cls, value: Any) -> Gift:
        body = obj(value, "a gift")
        tier = str(body.get("tier", ""))
        return cls(text(body, "id"), text(body, "name"), whole(body, "coins"), tier)


@dataclass(frozen=True, slots=True)
class CoinPackage:
    id: str
    coins: int
    price_cents: int

    @classmethod
    def from_json(cls, value: Any) -> CoinPackage:
        body = obj(value, "a coin package")
        return cls(text(body, "id"), whole(body, "coins"), whole(body, "price_cents"))


@dataclass(frozen=True, slots=True)
class SpendingLimit:
    period: str  # "daily" or "monthly"
    coins: int

    @classmethod
    def from_json(cls, value: Any) -> SpendingLimit | None:
        if value is None:
            return None
        body = obj(value, "a spending limit")
        return cls(text(body, "period"), whole(body, "coins"))


@dataclass(frozen=True, slots=True)
class Wallet:
    coins: int
    diamonds: int
    locked_diamonds: int
    spending_limit: SpendingLimit | None

    @classmethod
    def from_json(cls, value: Any) -> Wallet:
        body = obj(value)
        return cls(
            whole(body, "coins"),
            whole(body, "diamonds"),
            whole(body, "locked_diamonds"),
            SpendingLimit.from_json(body.get("spending_limit")),
        )


@dataclass(frozen=True, slots=True)
class Profile:
    """`GET /api/me`: who the token is, and its balances."""

    user_id: str
    name: str
    birthdate: str
    age: int
    region: str
    status: str
    verified: bool
    payout_method: JsonObject | None
    wallet: Wallet

    @classmethod
    def from_json(cls, value: Any) -> Profile:
        body = obj(value)
        payout = body.get("payout_method")
        return cls(
            user_id=text(body, "user_id"),
            name=text(body, "name"),
            birthdate=text(body, "birthdate"),
            age=whole(body, "age"),
            region=text(body, "region"),
            status=text(body, "status"),
            verified=bool(body.get("verified")),
            payout_method=obj(payout, "payout_method") if payout is not None else None,
            wallet=Wallet.from_json(body),
        )


@dataclass(frozen=True, slots=True)
class Recharge:
    """A recharge's answer: `coins` is the balance after it; `replayed` when the same
    idempotency key had been used before (nothing was bought twice)."""

    recharge_id: str
    package_id: str
    coins: int
    added: int
    price_cents: int
    replayed: bool

    @classmethod
    def from_json(cls, value: Any) -> Recharge:
        body = obj(value)
        return cls(
            text(body, "recharge_id"),
            text(body, "package_id"),
            whole(body, "coins"),
            whole(body, "added"),
            whole(body, "price_cents"),
            bool(body.get("replayed")),
        )


@dataclass(frozen=True, slots=True)
class TransactionPage:
    """Ledger entries, newest first (each as the server sent it), and the `before` of the
    next page (None at the end)."""

    transactions: list[JsonObject]
    next_before: str | None

    @classmethod
    def from_json(cls, value: Any) -> TransactionPage:
        body = obj(value)
        after = body.get("next_before")
        return cls(items(body, "transactions"), after if isinstance(after, str) else None)


@dataclass(frozen=True, slots=True)
class Cashout:
    cashout_id: str
    status: str  # "pending", then "settled" or "failed"
    usd_cents: int
    diamonds: int | None = None
    replayed: bool = False
    created_ms: int | None = None
    finished_ms: int | None = None

    @classmethod
    def from_json(cls, value: Any) -> Cashout:
        body = obj(value)
        return cls(
            cashout_id=text(body, "cashout_id"),
            status=text(body, "status"),
            usd_cents=whole(body, "usd_cents"),
            diamonds=maybe_whole(body, "diamonds"),
            replayed=bool(body.get("replayed")),
            created_ms=maybe_whole(body, "created_ms"),
            finished_ms=maybe_whole(body, "finished_ms"),
        )


@dataclass(frozen=True, slots=True)
class TopGifter:
    user_id: str
    name: str
    coins: int

    @classmethod
    def from_json(cls, value: Any) -> TopGifter:
        body = obj(value, "a top gifter")
        return cls(text(body, "user_id"), text(body, "name"), whole(body, "coins"))


@dataclass(frozen=True, slots=True)
class Room:
    """A room as `GET /api/rooms` lists it (and the welcome frame describes it)."""

    room_id: str
    title: str
    creator: UserRef
    status: str
    viewers: int = 0

    @classmethod
    def from_json(cls, value: Any) -> Room:
        body = obj(value, "a room")
        return cls(
            text(body, "room_id"),
            text(body, "title"),
            UserRef.from_json(body.get("creator")),
            text(body, "status"),
            maybe_whole(body, "viewers") or 0,
        )


@dataclass(frozen=True, slots=True)
class RoomTotals:
    gift_coins: int
    gift_count: int
    chat_count: int


@dataclass(frozen=True, slots=True)
class RoomDetail:
    """`GET /api/rooms/{id}`: one room's state."""

    room: Room
    seq: int
    totals: RoomTotals
    top: list[TopGifter]
    created_ms: int
    ended_ms: int | None

    @property
    def room_id(self) -> str:
        return self.room.room_id

    @property
    def status(self) -> str:
        return self.room.status

    @classmethod
    def from_json(cls, value: Any) -> RoomDetail:
        body = obj(value)
        totals = obj(body.get("totals"), "totals")
        return cls(
            room=Room.from_json(body),
            seq=whole(body, "seq"),
            totals=RoomTotals(
                whole(totals, "gift_coins"),
                whole(totals, "gift_count"),
                whole(totals, "chat_count"),
            ),
            top=[TopGifter.from_json(t) for t in items(body, "top")],
            created_ms=whole(body, "created_ms"),
            ended_ms=maybe_whole(body, "ended_ms"),
        )
