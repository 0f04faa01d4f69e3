"""The wallet over REST, end to end against a real server and a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from server.room_commands import LiveRoom
from server.services import Services
from tests.accounts import APPROVED_CARD, Account, funded, recharge, sign_up
from tests.gifting import gifting


async def give_diamonds(
    services: Services, creator: Account, coins: int, http: httpx.AsyncClient
) -> None:
    """A fan sends `creator` gifts worth `coins` (through the real gift path)."""
    sender = await funded(http, "p10000")
    room_id = await services.rooms.create(creator_id=creator.user_id, creator_name="C", title="t")
    room = LiveRoom(room_id, creator.user_id)
    async with gifting(services) as g:
        while coins > 0:
            gift_id, count = (
                ("galaxy", min(coins // 1000, 9)) if coins >= 1000 else ("rose", min(coins, 99))
            )
            await g.send(sender.user_id, room, gift_id, count)
            coins -= services.catalog.gift(gift_id).coins * count


async def test_catalog_endpoints(http: httpx.AsyncClient) -> None:
    gifts = (await http.get("/api/gifts")).json()["gifts"]
    assert {"id": "rose", "name": "Rose", "coins": 1, "tier": "small"} in gifts
    assert [g["coins"] for g in gifts] == sorted(g["coins"] for g in gifts)
    packages = (await http.get("/api/coin-packages")).json()["packages"]
    assert [p["coins"] for p in packages] == [100, 500, 1000, 5000, 10000]
    assert all(isinstance(p["price_cents"], int) for p in packages)


async def test_sign_up_me_and_tokens(http: httpx.AsyncClient) -> None:
    account = await sign_up(http, name="Bea", region="GB")
    me = (await http.get("/api/me", headers=account.headers)).json()
    assert me["user_id"] == account.user_id and me["name"] == "Bea" and me["region"] == "GB"
    assert me["coins"] == 0 and me["verified"] is False and me["payout_method"] is None
    for headers in [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": account.token},
        {"Authorization": "Bearer " + account.token[:-3] + "abc"},
    ]:
        r = await http.get("/api/me", headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "A", "birthdate": "2999-01-01", "region": "US"},
        {"name": "A", "birthdate": "1990-02-30", "region": "US"},
        {"name": "A", "birthdate": "01/02/1990", "region": "US"},
        {"name": "A", "birthdate": "1990-01-01", "region": "XX"},
        {"name": "A" * 41, "birthdate": "1990-01-01", "region": "US"},
        {"name": "", "birthdate": "1990-01-01", "region": "US"},
        {"name": 5, "birthdate": "1990-01-01", "region": "US"},
        {"name": "A", "birthdate": "1990-01-01"},
        {"name": "A", "birthdate": "1990-01-01", "region": "US", "coins": 100},
        [],
    ],
)
async def test_bad_sign_ups_are_400(http: httpx.AsyncClient, body: object) -> None:
    r = await http.post("/api/users", json=body)
    assert r.status_code == 400
    assert r.json()["code"] == "bad_request" and r.json()["message"]


async def test_malformed_json_is_400_not_500(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    for raw in [b"{", b"null", b"\xff\xfe", b""]:
        r = await http.post("/api/wallet/recharge", content=raw, headers=account.headers)
        assert r.status_code == 400, raw[:20]
        assert r.json()["code"] == "bad_request"
    # Over the body limit: refused from its length alone (tests/test_http_limits.py).
    raw = b'{"package_id": "p100"' + b" " * 20000 + b"}"
    r = await http.post("/api/wallet/recharge", content=raw, headers=account.headers)
    assert (r.status_code, r.json()["code"]) == (413, "too_large")


async def test_recharge_credits_coins_and_writes_the_ledger(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    r = await recharge(http, account, "p500")
    assert r.status_code == 200
    body = r.json()
    assert body["coins"] == 500 and body["added"] == 500 and body["price_cents"] == 495
    assert body["replayed"] is False
    r = await recharge(http, account, "p100")
    assert r.json()["coins"] == 600
    wallet = (await http.get("/api/wallet", headers=account.headers)).json()
    assert wallet == {"coins": 600, "diamonds": 0, "locked_diamonds": 0, "spending_limit": None}
    history = (await http.get("/api/wallet/transactions", headers=account.headers)).json()
    kinds = [(t["kind"], t["coins"], t["coins_after"]) for t in history["transactions"]]
    assert kinds == [("recharge", 100, 600), ("recharge", 500, 500)]


async def test_recharge_idempotency(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    key = uuid.uuid4().hex
    first = await recharge(http, account, "p1000", key=key)
    again = await recharge(http, account, "p1000", key=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == {**first.json(), "replayed": True}
    other = await recharge(http, account, "p500", key=key)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
    assert (await http.get("/api/wallet", headers=account.headers)).json()["coins"] == 1000
    # Keys are per user: another user's same key is their own.
    someone = await sign_up(http)
    assert (await recharge(http, someone, "p100", key=key)).json()["coins"] == 100


@pytest.mark.parametrize(
    ("card", "status", "code"),
    [
        ("4000000000000002", 402, "payment_declined"),
        ("4000000000009995", 402, "insufficient_funds"),
        ("4242", 400, "bad_request"),
        ("abcd4242abcd4242", 400, "bad_request"),
    ],
)
async def test_declined_cards_write_nothing(
    http: httpx.AsyncClient, card: str, status: int, code: str
) -> None:
    account = await sign_up(http)
    r = await http.post(
        "/api/wallet/recharge",
        headers=account.headers,
        json={"package_id": "p100", "card_number": card, "idempotency_key": "k1"},
    )
    assert (r.status_code, r.json()["code"]) == (status, code)
    assert (await http.get("/api/wallet", headers=account.headers)).json()["coins"] == 0
    history = (await http.get("/api/wallet/transactions", headers=account.headers)).json()
    assert history["transactions"] == []


async def test_recharge_refusals(http: httpx.AsyncClient) -> None:
    minor = await sign_up(http, birthdate="2012-06-01")
    r = await recharge(http, minor)
    assert (r.status_code, r.json()["code"]) == (403, "underage")
    closed = await sign_up(http, region="KP")
    r = await recharge(http, closed)
    assert (r.status_code, r.json()["code"]) == (403, "region_unavailable")
    adult = await sign_up(http)
    for body in [
        {"package_id": "p7", "card_number": APPROVED_CARD, "idempotency_key": "a"},
        {"package_id": "p100", "card_number": APPROVED_CARD, "idempotency_key": ""},
        {"package_id": "p100", "card_number": APPROVED_CARD, "idempotency_key": "x" * 101},
        {"package_id": "p100", "card_number": APPROVED_CARD},
        {"package_id": 100, "card_number": APPROVED_CARD, "idempotency_key": "b"},
    ]:
        r = await http.post("/api/wallet/recharge", json=body, headers=adult.headers)
        assert r.status_code == 400, body
    assert (await http.get("/api/wallet", headers=adult.headers)).json()["coins"] == 0


async def test_suspended_account_cannot_recharge(
    http: httpx.AsyncClient, services: Services
) -> None:
    account = await sign_up(http)
    await services.wallets.set_status(account.user_id, "suspended")
    r = await recharge(http, account)
    assert (r.status_code, r.json()["code"]) == (403, "suspended")


async def test_transactions_paginate_newest_first(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    for _ in range(7):
        assert (await recharge(http, account, "p100")).status_code == 200
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        params = {"limit": "3", **({"before": before} if before else {})}
        page = (
            await http.get("/api/wallet/transactions", params=params, headers=account.headers)
        ).json()
        seen += [t["coins_after"] for t in page["transactions"]]
        pages += 1
        before = page["next_before"]
        if before is None:
            break
    assert seen == [700, 600, 500, 400, 300, 200, 100] and pages == 3
    for params in [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"before": "nope"}]:
        r = await http.get("/api/wallet/transactions", params=params, headers=account.headers)
        assert r.status_code == 400


async def test_spending_limit_set_read_remove(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    r = await http.put(
        "/api/wallet/spending-limit",
        json={"period": "daily", "coins": 300},
        headers=account.headers,
    )
    assert r.json() == {"spending_limit": {"period": "daily", "coins": 300}}
    wallet = (await http.get("/api/wallet", headers=account.headers)).json()
    assert wallet["spending_limit"] == {"period": "daily", "coins": 300}
    r = await http.put(
        "/api/wallet/spending-limit",
        json={"period": "daily", "coins": None},
        headers=account.headers,
    )
    assert r.json() == {"spending_limit": None}
    for body in [
        {"period": "weekly", "coins": 5},
        {"period": "daily", "coins": -5},
        {"period": "daily", "coins": 2.5},
        {"period": "daily"},
    ]:
        r = await http.put("/api/wallet/spending-limit", json=body, headers=account.headers)
        assert r.status_code == 400, body


async def test_verification_and_payout_method(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    r = await http.put(
        "/api/me/verification", json={"legal_name": "", "id_number": "X1"}, headers=account.headers
    )
    assert r.status_code == 400
    r = await http.put(
        "/api/me/verification",
        json={"legal_name": "Ann Lee", "id_number": "X1"},
        headers=account.headers,
    )
    assert r.json() == {"verified": True}
    minor = await sign_up(http, birthdate="2012-01-01")
    r = await http.put(
        "/api/me/verification", json={"legal_name": "Kid", "id_number": "X2"}, headers=minor.headers
    )
    assert (r.status_code, r.json()["code"]) == (403, "underage")
    r = await http.put(
        "/api/me/payout-method",
        headers=account.headers,
        json={"type": "bank", "account_number": "000123456789", "routing_number": "110000000"},
    )
    assert r.json() == {"payout_method": {"type": "bank", "account_last4": "6789"}}
    me = (await http.get("/api/me", headers=account.headers)).json()
    assert me["verified"] is True and me["payout_method"]["account_last4"] == "6789"
    r = await http.put(
        "/api/me/payout-method", json={"type": "paypal", "email": "x"}, headers=account.headers
    )
    assert r.status_code == 400


async def creator_ready_to_cash_out(
    http: httpx.AsyncClient,
    services: Services,
    *,
    diamonds: int,
    account_number: str = "000123456789",
) -> Account:
    creator = await sign_up(http, name="Cleo")
    await http.put(
        "/api/me/verification",
        json={"legal_name": "Cleo Q", "id_number": "ID9"},
        headers=creator.headers,
    )
    await http.put(
        "/api/me/payout-method",
        headers=creator.headers,
        json={"type": "bank", "account_number": account_number, "routing_number": "110000000"},
    )
    await give_diamonds(services, creator, diamonds, http)
    return creator


async def wait_for_cashout(
    http: httpx.AsyncClient, account: Account, cashout_id: str
) -> dict[str, object]:
    for _ in range(100):
        state: dict[str, object] = (
            await http.get(f"/api/wallet/cashouts/{cashout_id}", headers=account.headers)
        ).json()
        if state["status"] != "pending":
            return state
        await asyncio.sleep(0.1)
    raise AssertionError("the cash-out stayed pending")


async def test_cashout_settles(http: httpx.AsyncClient, services: Services) -> None:
    creator = await creator_ready_to_cash_out(http, services, diamonds=5000)
    r = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 3000, "idempotency_key": "c1"},
        headers=creator.headers,
    )
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "pending" and body["usd_cents"] == 1500
    wallet = (await http.get("/api/wallet", headers=creator.headers)).json()
    assert (wallet["diamonds"], wallet["locked_diamonds"]) == (2000, 3000)
    again = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 3000, "idempotency_key": "c1"},
        headers=creator.headers,
    )
    assert again.status_code == 202 and again.json()["cashout_id"] == body["cashout_id"]
    conflict = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 2000, "idempotency_key": "c1"},
        headers=creator.headers,
    )
    assert conflict.status_code == 409
    state = await wait_for_cashout(http, creator, body["cashout_id"])
    assert state["status"] == "settled"
    wallet = (await http.get("/api/wallet", headers=creator.headers)).json()
    assert (wallet["diamonds"], wallet["locked_diamonds"]) == (2000, 0)
    kinds = [
        t["kind"]
        for t in (await http.get("/api/wallet/transactions", headers=creator.headers)).json()[
            "transactions"
        ]
    ]
    assert kinds[:2] == ["cashout_settled", "cashout_requested"]
    other = await sign_up(http)
    r = await http.get(f"/api/wallet/cashouts/{body['cashout_id']}", headers=other.headers)
    assert r.status_code == 404


async def test_failed_payout_returns_the_diamonds(
    http: httpx.AsyncClient, services: Services
) -> None:
    creator = await creator_ready_to_cash_out(
        http, services, diamonds=2500, account_number="4000000002"
    )
    r = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 2500, "idempotency_key": "c2"},
        headers=creator.headers,
    )
    assert r.status_code == 202
    state = await wait_for_cashout(http, creator, r.json()["cashout_id"])
    assert state["status"] == "failed"
    wallet = (await http.get("/api/wallet", headers=creator.headers)).json()
    assert (wallet["diamonds"], wallet["locked_diamonds"]) == (2500, 0)
    kinds = [
        t["kind"]
        for t in (await http.get("/api/wallet/transactions", headers=creator.headers)).json()[
            "transactions"
        ]
    ]
    assert kinds[:2] == ["cashout_failed", "cashout_requested"]


async def test_cashout_refusals(http: httpx.AsyncClient, services: Services) -> None:
    plain = await sign_up(http)
    await give_diamonds(services, plain, 2500, http)
    r = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 2000, "idempotency_key": "r1"},
        headers=plain.headers,
    )
    assert (r.status_code, r.json()["code"]) == (403, "not_verified")
    await http.put(
        "/api/me/verification", json={"legal_name": "P", "id_number": "1"}, headers=plain.headers
    )
    r = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 2000, "idempotency_key": "r2"},
        headers=plain.headers,
    )
    assert (r.status_code, r.json()["code"]) == (403, "no_payout_method")
    await http.put(
        "/api/me/payout-method",
        json={"type": "paypal", "email": "p@example.com"},
        headers=plain.headers,
    )
    r = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 1999, "idempotency_key": "r3"},
        headers=plain.headers,
    )
    assert (r.status_code, r.json()["code"]) == (422, "below_minimum")
    r = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 3000, "idempotency_key": "r4"},
        headers=plain.headers,
    )
    assert (r.status_code, r.json()["code"]) == (422, "insufficient_diamonds")
    for body in [
        {"diamonds": -5, "idempotency_key": "r5"},
        {"diamonds": "2000", "idempotency_key": "r6"},
        {"diamonds": 10**30, "idempotency_key": "r7"},
        {"diamonds": 2000},
    ]:
        r = await http.post("/api/wallet/cashouts", json=body, headers=plain.headers)
        assert r.status_code == 400, body
    wallet = (await http.get("/api/wallet", headers=plain.headers)).json()
    assert (wallet["diamonds"], wallet["locked_diamonds"]) == (2500, 0)
    minor = await sign_up(http, birthdate="2012-01-01")
    r = await http.post(
        "/api/wallet/cashouts",
        json={"diamonds": 2000, "idempotency_key": "r8"},
        headers=minor.headers,
    )
    assert (r.status_code, r.json()["code"]) == (403, "underage")
