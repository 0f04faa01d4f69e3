from __future__ import annotations

import httpx


async def test_sign_up_and_read_wallet(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/users", json={"name": "Ann", "birthdate": "1990-01-01", "region": "US"}
    )
    assert r.status_code == 201
    token = r.json()["token"]
    w = await http.get("/api/wallet", headers={"Authorization": f"Bearer {token}"})
    assert w.json() == {"coins": 0, "diamonds": 0, "locked_diamonds": 0, "spending_limit": None}
