"""Signing up and funding test users over the real REST API, through the project's
client (`giftstream_client`): the calls the tests make are the calls every client makes.
Retries are off, so a test sees exactly what the server answered."""

from __future__ import annotations

import httpx

from giftstream_client import calls
from giftstream_client.models import Account
from giftstream_client.rest import GiftstreamClient

APPROVED_CARD = calls.APPROVED_CARD

__all__ = ["APPROVED_CARD", "Account", "api", "funded", "recharge", "sign_up"]


def api(http: httpx.AsyncClient) -> GiftstreamClient:
    """The typed client over a test's `httpx.AsyncClient` (whose base_url is the server)."""
    return GiftstreamClient(http=http, attempts=1)


async def sign_up(
    http: httpx.AsyncClient, *, name: str = "Ann", birthdate: str = "1990-01-01", region: str = "US"
) -> Account:
    return await api(http).sign_up(name, birthdate=birthdate, region=region)


async def recharge(
    http: httpx.AsyncClient, account: Account, package_id: str = "p1000", *, key: str | None = None
) -> httpx.Response:
    """The recharge call as the client builds it, answered as is (tests look at refusals)."""
    call = calls.recharge(account, package_id, idempotency_key=key)
    return await http.request(
        call.method, call.url_path, content=call.content(), headers=call.headers()
    )


async def funded(http: httpx.AsyncClient, package_id: str = "p1000", **kwargs: str) -> Account:
    account = await sign_up(http, **kwargs)
    await api(http).recharge(account, package_id)
    return account
