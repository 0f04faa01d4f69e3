"""Every REST call of the API (DESIGN section 4) as a value, without I/O: its method,
path, body and token, the status that means success, and how to read the answer.

The asyncio client (`giftstream_client.rest`) runs them with httpx; the Locust users run
the very same calls with Locust's own HTTP client, so that Locust times them. One
definition per call, whoever sends it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

import orjson

from giftstream_client.errors import ApiError, ProtocolError, api_error
from giftstream_client.models import (
    Account,
    Cashout,
    CoinPackage,
    Gift,
    JsonObject,
    Profile,
    Recharge,
    Room,
    RoomDetail,
    SpendingLimit,
    TransactionPage,
    Wallet,
    items,
    obj,
    text,
)

T = TypeVar("T")

APPROVED_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
INSUFFICIENT_FUNDS_CARD = "4000000000009995"
ADULT_BIRTHDATE = "1990-01-01"


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One REST request and how to read its answer.

    `idempotent`: sending it twice does what sending it once does (a GET, or a POST with an
    idempotency key reused by the retry), so any transient failure may be retried; other
    calls are retried only when the server surely did not act (no connection, 429, 503).
    `name` is how load reports group it (`POST /api/rooms/{id}/end`, not every id)."""

    method: str
    path: str
    expect: int
    parse: Callable[[Any], T]
    body: JsonObject | None = None
    token: str | None = None
    idempotent: bool = False
    name: str = ""
    query: dict[str, str] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        return self.path + ("?" + urlencode(self.query) if self.query else "")

    @property
    def label(self) -> str:
        return self.name or f"{self.method} {self.path}"

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def content(self) -> bytes | None:
        return None if self.body is None else orjson.dumps(self.body)

    def answer(self, status: int, content: bytes) -> T:
        """The parsed answer for `status` and body `content`; raises the `ApiError` the
        server's `{code, message}` names (or `ProtocolError` for a body that is not JSON)."""
        if status != self.expect:
            raise error_from(status, content)
        try:
            body = orjson.loads(content) if content else None
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"{self.label} answered {status} with a non-JSON body") from exc
        return self.parse(body)


def error_from(status: int, content: bytes) -> ApiError:
    """The typed error for an error answer: its `{code, message}`, or, when the body is
    not that (a proxy's page, a plain-text 404), `http_<status>` and the body's start."""
    try:
        body = orjson.loads(content)
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            return api_error(status, body["code"], str(body.get("message", "")))
    except orjson.JSONDecodeError:
        pass
    snippet = content[:200].decode("utf-8", "replace").strip()
    return api_error(status, f"http_{status}", snippet or f"HTTP {status}")


def new_key() -> str:
    """A fresh idempotency key (or request id)."""
    return uuid.uuid4().hex


def _nothing(_: Any) -> None:
    return None


def _raw(value: Any) -> JsonObject:
    return obj(value)


def _account(name: str) -> Callable[[Any], Account]:
    def parse(value: Any) -> Account:
        body = obj(value)
        return Account(text(body, "user_id"), text(body, "token"), name)

    return parse


# --- users ---------------------------------------------------------------------------


def sign_up(name: str, *, birthdate: str = ADULT_BIRTHDATE, region: str = "US") -> Call[Account]:
    return Call(
        "POST",
        "/api/users",
        201,
        _account(name),
        body={"name": name, "birthdate": birthdate, "region": region},
    )


def me(account: Account) -> Call[Profile]:
    return Call("GET", "/api/me", 200, Profile.from_json, token=account.token, idempotent=True)


def verify_identity(account: Account, *, legal_name: str, id_number: str) -> Call[None]:
    return Call(
        "PUT",
        "/api/me/verification",
        200,
        _nothing,
        body={"legal_name": legal_name, "id_number": id_number},
        token=account.token,
        idempotent=True,
    )


def set_payout_method(account: Account, method: JsonObject) -> Call[JsonObject]:
    """`method`: `{"type": "bank", "account_number", "routing_number"}` or
    `{"type": "paypal", "email"}`; the answer is the method as the server masks it."""
    return Call(
        "PUT",
        "/api/me/payout-method",
        200,
        lambda body: obj(obj(body).get("payout_method"), "payout_method"),
        body=dict(method),
        token=account.token,
        idempotent=True,
    )


# --- catalog and wallet ----------------------------------------------------------------


def gifts() -> Call[list[Gift]]:
    return Call(
        "GET",
        "/api/gifts",
        200,
        lambda body: [Gift.from_json(g) for g in items(obj(body), "gifts")],
        idempotent=True,
    )


def coin_packages() -> Call[list[CoinPackage]]:
    return Call(
        "GET",
        "/api/coin-packages",
        200,
        lambda body: [CoinPackage.from_json(p) for p in items(obj(body), "packages")],
        idempotent=True,
    )


def wallet(account: Account) -> Call[Wallet]:
    return Call("GET", "/api/wallet", 200, Wallet.from_json, token=account.token, idempotent=True)


def recharge(
    account: Account,
    package_id: str,
    *,
    card_number: str = APPROVED_CARD,
    idempotency_key: str | None = None,
) -> Call[Recharge]:
    """Buy `package_id`; idempotent by its key (a fresh one unless given), which every
    retry of this call reuses."""
    return Call(
        "POST",
        "/api/wallet/recharge",
        200,
        Recharge.from_json,
        body={
            "package_id": package_id,
            "card_number": card_number,
            "idempotency_key": idempotency_key or new_key(),
        },
        token=account.token,
        idempotent=True,
    )


def transactions(
    account: Account, *, limit: int = 20, before: str | None = None
) -> Call[TransactionPage]:
    query = {"limit": str(limit)}
    if before is not None:
        query["before"] = before
    return Call(
        "GET",
        "/api/wallet/transactions",
        200,
        TransactionPage.from_json,
        token=account.token,
        idempotent=True,
        query=query,
    )


def set_spending_limit(
    account: Account, period: str, coins: int | None
) -> Call[SpendingLimit | None]:
    """A daily or monthly cap on coins spent on gifts; `coins=None` removes it."""
    return Call(
        "PUT",
        "/api/wallet/spending-limit",
        200,
        lambda body: SpendingLimit.from_json(obj(body).get("spending_limit")),
        body={"period": period, "coins": coins},
        token=account.token,
        idempotent=True,
    )


def request_cashout(
    account: Account, diamonds: int, *, idempotency_key: str | None = None
) -> Call[Cashout]:
    return Call(
        "POST",
        "/api/wallet/cashouts",
        202,
        Cashout.from_json,
        body={"diamonds": diamonds, "idempotency_key": idempotency_key or new_key()},
        token=account.token,
        idempotent=True,
    )


def cashout(account: Account, cashout_id: str) -> Call[Cashout]:
    return Call(
        "GET",
        f"/api/wallet/cashouts/{quote(cashout_id, safe='')}",
        200,
        Cashout.from_json,
        token=account.token,
        idempotent=True,
        name="GET /api/wallet/cashouts/{id}",
    )


# --- rooms -----------------------------------------------------------------------------


def create_room(account: Account, title: str) -> Call[str]:
    """Go live: the new room's id."""
    return Call(
        "POST",
        "/api/rooms",
        201,
        lambda body: text(obj(body), "room_id"),
        body={"title": title},
        token=account.token,
    )


def rooms() -> Call[list[Room]]:
    return Call(
        "GET",
        "/api/rooms",
        200,
        lambda body: [Room.from_json(r) for r in items(obj(body), "rooms")],
        idempotent=True,
    )


def room(room_id: str) -> Call[RoomDetail]:
    return Call(
        "GET",
        f"/api/rooms/{quote(room_id, safe='')}",
        200,
        RoomDetail.from_json,
        idempotent=True,
        name="GET /api/rooms/{id}",
    )


def end_room(account: Account, room_id: str) -> Call[None]:
    return Call(
        "POST",
        f"/api/rooms/{quote(room_id, safe='')}/end",
        200,
        _nothing,
        token=account.token,
        idempotent=True,
        name="POST /api/rooms/{id}/end",
    )


def healthz() -> Call[JsonObject]:
    return Call("GET", "/healthz", 200, _raw, idempotent=True)
