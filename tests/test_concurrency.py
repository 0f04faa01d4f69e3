"""Hammering the money: 500 recharges and cash-outs at once, with mixed and repeated
idempotency keys. Every key is applied exactly once and the audit holds."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import httpx

from server.audit import audit
from server.services import Services
from tests.accounts import APPROVED_CARD, Account, sign_up
from tests.test_api_wallet import creator_ready_to_cash_out


async def test_500_concurrent_recharges_and_cashouts(
    http: httpx.AsyncClient, services: Services, server_url: str
) -> None:
    rng = random.Random(7)
    viewers = [await sign_up(http, name=f"v{i}") for i in range(8)]
    creators = [await creator_ready_to_cash_out(http, services, diamonds=9000) for _ in range(3)]
    packages = {"p100": 100, "p500": 500, "p1000": 1000, "p5000": 5000}

    # Recharges: 25 keys per viewer, each sent up to 3 times; some repeats change the body.
    recharge_calls: list[tuple[Account, str, str]] = []
    for v in viewers:
        for k in range(25):
            package = rng.choice(["p100", "p500", "p1000"])
            for _ in range(rng.randint(1, 3)):
                recharge_calls.append((v, f"rk{k}", package))
            if rng.random() < 0.15:
                recharge_calls.append((v, f"rk{k}", "p5000"))  # same key, other body
    # Cash-outs: 9,000 diamonds each, 2,000 a request: at most 4 keys can succeed.
    cashout_calls: list[tuple[Account, str, int]] = []
    for c in creators:
        for k in range(8):
            for _ in range(rng.randint(1, 3)):
                cashout_calls.append((c, f"ck{k}", 2000))
    calls: list[tuple[str, Account, str, object]] = [("recharge", *c) for c in recharge_calls]
    calls += [("cashout", *c) for c in cashout_calls]
    rng.shuffle(calls)
    calls = calls[:500]
    assert len(calls) >= 400

    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=server_url, timeout=30, limits=limits) as client:

        async def fire(
            kind: str, account: Account, key: str, arg: object
        ) -> tuple[str, Account, str, object, httpx.Response]:
            if kind == "recharge":
                body = {"package_id": arg, "card_number": APPROVED_CARD, "idempotency_key": key}
                return (
                    kind,
                    account,
                    key,
                    arg,
                    await client.post("/api/wallet/recharge", json=body, headers=account.headers),
                )
            body = {"diamonds": arg, "idempotency_key": key}
            return (
                kind,
                account,
                key,
                arg,
                await client.post("/api/wallet/cashouts", json=body, headers=account.headers),
            )

        results = await asyncio.gather(*(fire(*c) for c in calls))

    first_body: dict[tuple[str, str, str], object] = {}
    applied: dict[tuple[str, str, str], dict[str, object]] = {}
    answers: dict[tuple[str, str, str], list[dict[str, object]]] = defaultdict(list)
    for kind, account, key, arg, r in results:
        assert r.status_code in (200, 202, 409, 422), r.text
        ident = (kind, account.user_id, key)
        if r.status_code in (200, 202):
            first_body.setdefault(ident, arg)
            assert first_body[ident] == arg, "a key answered for two bodies"
            answers[ident].append(r.json())
        elif r.status_code == 409:
            assert r.json()["code"] == "idempotency_conflict"
        else:
            assert (kind, r.json()["code"]) == ("cashout", "insufficient_diamonds")
    for ident, got in answers.items():
        fresh = [a for a in got if a["replayed"] is False]
        assert len(fresh) == 1, f"{ident} applied {len(fresh)} times"
        assert all({**a, "replayed": False} == fresh[0] for a in got), "replays differ"
        applied[ident] = fresh[0]

    for v in viewers:
        expected = sum(
            packages[str(first_body[i])]
            for i in applied
            if i[0] == "recharge" and i[1] == v.user_id
        )
        assert (await http.get("/api/wallet", headers=v.headers)).json()["coins"] == expected
        ledger = (await http.get("/api/wallet/transactions?limit=100", headers=v.headers)).json()[
            "transactions"
        ]
        assert len(ledger) == sum(1 for i in applied if i[0] == "recharge" and i[1] == v.user_id)
    for c in creators:
        requested = sum(2000 for i in applied if i[0] == "cashout" and i[1] == c.user_id)
        assert 0 < requested <= 8000
        w = (await http.get("/api/wallet", headers=c.headers)).json()
        assert w["diamonds"] == 9000 - requested

    # Let the payout processor settle everything, then audit the whole store.
    for _ in range(100):
        report = await audit(services.redis, services.settings)
        if report.pending_cashouts == 0:
            break
        await asyncio.sleep(0.1)
    assert report.ok, report.lines()
    assert report.pending_cashouts == 0
