"""The asyncio REST client: every call of `giftstream_client.calls`, sent with httpx.

    async with GiftstreamClient("http://127.0.0.1:8000") as api:
        ann = await api.sign_up("Ann")
        await api.recharge(ann, "p1000")
        room_id = await api.create_room(ann, "my live")

Refusals raise the `ApiError` subclass of their status, carrying the server's `code`;
no answer at all raises `ServerUnreachable` with a one-line reason. Transient failures
(no connection, 429, 502, 503, 504) are retried a few times with a growing, jittered
pause; calls that are not idempotent are retried only when the server surely did not
act on them (it could not be reached, or answered 429 or 503)."""

from __future__ import annotations

import asyncio
import random
import socket
from types import TracebackType
from typing import TypeVar

import httpx

from giftstream_client import calls
from giftstream_client.calls import Call
from giftstream_client.errors import ApiError, ServerUnreachable
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
)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Statuses that say the server did nothing: safe to retry even a call that is not
# idempotent.
NOTHING_DONE_STATUSES = frozenset({429, 503})


def ws_base(http_url: str) -> str:
    """`ws://host:port` for `http://host:port` (and wss for https)."""
    base = http_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :]
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :]
    raise ValueError(f"the server URL must start with http:// or https://, got {http_url!r}")


def describe_transport_error(exc: httpx.TransportError) -> str:
    """A few words for a failure without an answer (httpx's own text can be empty)."""
    detail = str(exc).strip()
    if isinstance(exc, httpx.ConnectError):
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
                return "connection refused (is the server running?)"
            if isinstance(cause, socket.gaierror):
                return f"unknown host ({cause})"
            cause = cause.__cause__ or cause.__context__
        return f"cannot connect ({detail or 'no detail'})"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}{': ' + detail if detail else ''}"


class GiftstreamClient:
    """REST calls to one server. Give it a base URL (it then owns an httpx client and
    closes it on exit), or an `httpx.AsyncClient` whose `base_url` is the server (its
    owner closes it)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 15.0,
        attempts: int = 3,
        max_connections: int = 100,
        rng: random.Random | None = None,
    ) -> None:
        if http is None:
            if base_url is None:
                raise ValueError("give the server's base_url or an httpx.AsyncClient")
            http = httpx.AsyncClient(
                base_url=base_url.rstrip("/"),
                timeout=timeout_s,
                limits=httpx.Limits(max_connections=max_connections),
            )
            self._owns_http = True
        else:
            self._owns_http = False
        self.http = http
        self.base_url = str(http.base_url).rstrip("/")
        self.attempts = max(1, attempts)
        self._rng = rng or random.Random()

    @property
    def ws_base(self) -> str:
        return ws_base(self.base_url)

    async def __aenter__(self) -> GiftstreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def run(self, call: Call[T]) -> T:
        """Send `call` (retrying what may be retried) and return its parsed answer."""
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            try:
                response = await self.http.request(
                    call.method, call.url_path, content=call.content(), headers=call.headers()
                )
            except httpx.TransportError as exc:
                nothing_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if last or not (call.idempotent or nothing_sent):
                    raise ServerUnreachable(self.base_url, describe_transport_error(exc)) from exc
            else:
                status = response.status_code
                retry = status in RETRY_STATUSES and (
                    call.idempotent or status in NOTHING_DONE_STATUSES
                )
                if status == call.expect or last or not retry:
                    return call.answer(status, response.content)
            await asyncio.sleep(self._pause(attempt))
        raise AssertionError("unreachable")

    def _pause(self, attempt: int) -> float:
        step = 0.2 * 2.0 ** (attempt - 1)
        return step / 2 + self._rng.uniform(0, step / 2)

    # --- users -------------------------------------------------------------------------

    async def sign_up(
        self, name: str, *, birthdate: str = calls.ADULT_BIRTHDATE, region: str = "US"
    ) -> Account:
        return await self.run(calls.sign_up(name, birthdate=birthdate, region=region))

    async def me(self, account: Account) -> Profile:
        return await self.run(calls.me(account))

    async def verify_identity(self, account: Account, *, legal_name: str, id_number: str) -> None:
        await self.run(calls.verify_identity(account, legal_name=legal_name, id_number=id_number))

    async def set_payout_method(self, account: Account, method: JsonObject) -> JsonObject:
        return await self.run(calls.set_payout_method(account, method))

    # --- catalog and wallet ------------------------------------------------------------

    async def gifts(self) -> list[Gift]:
        return await self.run(calls.gifts())

    async def coin_packages(self) -> list[CoinPackage]:
        return await self.run(calls.coin_packages())

    async def wallet(self, account: Account) -> Wallet:
        return await self.run(calls.wallet(account))

    async def recharge(
        self,
        account: Account,
        package_id: str,
        *,
        card_number: str = calls.APPROVED_CARD,
        idempotency_key: str | None = None,
    ) -> Recharge:
        return await self.run(
            calls.recharge(
                account, package_id, card_number=card_number, idempotency_key=idempotency_key
            )
        )

    async def transactions(
        self, account: Account, *, limit: int = 20, before: str | None = None
    ) -> TransactionPage:
        return await self.run(calls.transactions(account, limit=limit, before=before))

    async def set_spending_limit(
        self, account: Account, period: str, coins: int | None
    ) -> SpendingLimit | None:
        return await self.run(calls.set_spending_limit(account, period, coins))

    async def request_cashout(
        self, account: Account, diamonds: int, *, idempotency_key: str | None = None
    ) -> Cashout:
        return await self.run(
            calls.request_cashout(account, diamonds, idempotency_key=idempotency_key)
        )

    async def cashout(self, account: Account, cashout_id: str) -> Cashout:
        return await self.run(calls.cashout(account, cashout_id))

    # --- rooms -------------------------------------------------------------------------

    async def create_room(self, account: Account, title: str) -> str:
        return await self.run(calls.create_room(account, title))

    async def rooms(self) -> list[Room]:
        return await self.run(calls.rooms())

    async def room(self, room_id: str) -> RoomDetail:
        return await self.run(calls.room(room_id))

    async def end_room(self, account: Account, room_id: str) -> None:
        await self.run(calls.end_room(account, room_id))

    async def healthz(self) -> JsonObject:
        return await self.run(calls.healthz())


def is_transient(exc: BaseException) -> bool:
    """Worth trying again later: no answer, or an answer that says "not now"."""
    if isinstance(exc, ServerUnreachable):
        return True
    return isinstance(exc, ApiError) and exc.status in RETRY_STATUSES


__all__ = ["GiftstreamClient", "is_transient", "ws_base"]
