"""The REST calls the bot makes (DESIGN section 4), over one `httpx.AsyncClient`."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

APPROVED_CARD = "4242424242424242"
ADULT_BIRTHDATE = "1990-01-01"
# Transient answers worth another try; everything else is final.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ApiError(Exception):
    """A REST call failed: `code` is the server's error code (or a transport failure's
    name), `status` the HTTP status (0 when there was no answer)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    token: str
    name: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room_id: str
    title: str
    creator_id: str
    creator_name: str
    status: str


class GiftstreamApi:
    """Typed REST calls; transient failures (429, 5xx, connection errors) are retried a
    few times, which is safe: sign-up makes a new user at worst, and recharge is
    idempotent by its key, which a retry reuses."""

    def __init__(self, http: httpx.AsyncClient, *, attempts: int = 3) -> None:
        self.http = http
        self.attempts = attempts

    async def _call(
        self,
        method: str,
        path: str,
        *,
        expect: int,
        account: Account | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        headers = account.headers if account else None
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self.http.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt == self.attempts:
                    raise ApiError(0, type(exc).__name__, str(exc) or repr(exc)) from exc
                await asyncio.sleep(0.2 * attempt)
                continue
            if response.status_code == expect:
                answer: dict[str, Any] = response.json()
                return answer
            if response.status_code in RETRY_STATUSES and attempt < self.attempts:
                await asyncio.sleep(0.2 * attempt)
                continue
            raise _error(response)
        raise AssertionError("unreachable")

    async def gifts(self) -> dict[str, Any]:
        return await self._call("GET", "/api/gifts", expect=200)

    async def package_ids(self) -> list[str]:
        body = await self._call("GET", "/api/coin-packages", expect=200)
        return [str(p["id"]) for p in body["packages"]]

    async def sign_up(self, name: str, *, birthdate: str = ADULT_BIRTHDATE) -> Account:
        body = await self._call(
            "POST",
            "/api/users",
            expect=201,
            body={"name": name, "birthdate": birthdate, "region": "US"},
        )
        return Account(str(body["user_id"]), str(body["token"]), name)

    async def recharge(self, account: Account, package_id: str) -> int:
        """Buy a package with the approving test card; the new coin balance."""
        body = await self._call(
            "POST",
            "/api/wallet/recharge",
            expect=200,
            account=account,
            body={
                "package_id": package_id,
                "card_number": APPROVED_CARD,
                "idempotency_key": uuid.uuid4().hex,
            },
        )
        return int(body["coins"])

    async def create_room(self, account: Account, title: str) -> str:
        body = await self._call(
            "POST", "/api/rooms", expect=201, account=account, body={"title": title}
        )
        return str(body["room_id"])

    async def room(self, room_id: str) -> RoomInfo:
        body = await self._call("GET", f"/api/rooms/{room_id}", expect=200)
        creator = body.get("creator") or {}
        return RoomInfo(
            room_id=str(body["room_id"]),
            title=str(body.get("title", room_id)),
            creator_id=str(creator.get("user_id", "")),
            creator_name=str(creator.get("name", "")),
            status=str(body.get("status", "live")),
        )

    async def end_room(self, account: Account, room_id: str) -> None:
        await self._call("POST", f"/api/rooms/{room_id}/end", expect=200, account=account)


def _error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        return ApiError(response.status_code, str(body["code"]), str(body["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, f"http_{response.status_code}", response.text[:200])
