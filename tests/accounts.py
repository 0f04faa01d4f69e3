"""Signing up and funding test users over the real REST API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

APPROVED_CARD = "4242424242424242"


@dataclass(frozen=True)
class Account:
    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def sign_up(
    http: httpx.AsyncClient, *, name: str = "Ann", birthdate: str = "1990-01-01", region: str = "US"
) -> Account:
    r = await http.post("/api/users", json={"name": name, "birthdate": birthdate, "region": region})
    assert r.status_code == 201, r.text
    body = r.json()
    return Account(body["user_id"], body["token"])


async def recharge(
    http: httpx.AsyncClient, account: Account, package_id: str = "p1000", *, key: str | None = None
) -> httpx.Response:
    return await http.post(
        "/api/wallet/recharge",
        json={
            "package_id": package_id,
            "card_number": APPROVED_CARD,
            "idempotency_key": key or uuid.uuid4().hex,
        },
        headers=account.headers,
    )


async def funded(http: httpx.AsyncClient, package_id: str = "p1000", **kwargs: str) -> Account:
    account = await sign_up(http, **kwargs)
    r = await recharge(http, account, package_id)
    assert r.status_code == 200, r.text
    return account
