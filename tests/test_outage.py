"""Redis goes away mid-way: the API answers 503 `unavailable`, keeps running, and serves
again as soon as Redis is back, with every balance kept (append-only file)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from server.audit import main as audit_main
from server.embedded import EmbeddedRedis
from tests.live_server import LiveServer

CARD = "4242424242424242"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


def test_redis_down_is_503_and_recovers_without_restart(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    server = LiveServer(own_redis.url, log_dir=tmp_path / "logs").start()
    try:
        with httpx.Client(base_url=server.url, timeout=15) as http:
            r = http.post(
                "/api/users", json={"name": "Ann", "birthdate": "1990-01-01", "region": "US"}
            )
            headers = {"Authorization": f"Bearer {r.json()['token']}"}
            r = http.post(
                "/api/wallet/recharge",
                headers=headers,
                json={"package_id": "p500", "card_number": CARD, "idempotency_key": "k1"},
            )
            assert r.json()["coins"] == 500

            own_redis.stop()
            for path in ["/api/wallet", "/api/rooms"]:
                r = http.get(path, headers=headers)
                assert r.status_code == 503
                assert r.json()["code"] == "unavailable"
            r = http.post(
                "/api/wallet/recharge",
                headers=headers,
                json={"package_id": "p100", "card_number": CARD, "idempotency_key": "k2"},
            )
            assert (r.status_code, r.json()["code"]) == (503, "unavailable")
            assert http.get("/healthz").json() == {"status": "ok", "redis": "down"}

            own_redis.start()  # same port, same folder: the append-only file is replayed
            deadline = time.monotonic() + 10
            while True:
                r = http.get("/api/wallet", headers=headers)
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert r.status_code == 200 and r.json()["coins"] == 500
            # The refused recharge may be retried with its key and is applied once.
            for _ in range(2):
                r = http.post(
                    "/api/wallet/recharge",
                    headers=headers,
                    json={"package_id": "p100", "card_number": CARD, "idempotency_key": "k2"},
                )
                assert r.json()["coins"] == 600
    finally:
        server.stop()
    assert audit_main(["--redis-url", own_redis.url]) == 0


def test_audit_finds_a_coin_created_from_nothing(
    own_redis: EmbeddedRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = LiveServer(own_redis.url, log_dir=tmp_path / "logs").start()
    try:
        with httpx.Client(base_url=server.url, timeout=15) as http:
            r = http.post(
                "/api/users", json={"name": "Eve", "birthdate": "1990-01-01", "region": "US"}
            )
            user_id, token = r.json()["user_id"], r.json()["token"]
            http.post(
                "/api/wallet/recharge",
                headers={"Authorization": f"Bearer {token}"},
                json={"package_id": "p100", "card_number": CARD, "idempotency_key": "k"},
            )
    finally:
        server.stop()
    assert audit_main(["--redis-url", own_redis.url]) == 0
    assert "audit OK" in capsys.readouterr().out
    client = redis.Redis.from_url(own_redis.url)
    wallet_key = next(k for k in client.scan_iter(match=f"gs:*:wallet:{user_id}"))
    client.hincrby(wallet_key, "coins", 1)
    client.close()
    assert audit_main(["--redis-url", own_redis.url]) == 1
    out = capsys.readouterr().out
    assert "BREACHES" in out and user_id in out
