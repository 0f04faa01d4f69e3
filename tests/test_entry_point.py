"""`python -m server` with no REDIS_URL: it starts its own Redis-compatible server with the
append-only file on, a restart keeps every balance, and SIGTERM stops both."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from server.embedded import free_port


def start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GS_TOKEN_SECRET")}
    env.update({"GS_DATA_DIR": str(data_dir), "GS_PORT": str(port), "GS_HOST": "127.0.0.1"})
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not come up")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


def redis_port(log: Path) -> int:
    found = re.findall(r"redis://127\.0\.0\.1:(\d+)/0", log.read_text())
    assert found, log.read_text()
    return int(found[-1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_embedded_redis_keeps_balances_across_restarts_and_stops_with_the_server(
    tmp_path: Path,
) -> None:
    data, log, port = tmp_path / "data", tmp_path / "server.log", free_port()
    proc = start(data, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            r = http.post(
                "/api/users", json={"name": "Ann", "birthdate": "1990-01-01", "region": "US"}
            )
            token = r.json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            r = http.post(
                "/api/wallet/recharge",
                headers=headers,
                json={
                    "package_id": "p500",
                    "card_number": "4242424242424242",
                    "idempotency_key": "k",
                },
            )
            assert r.json()["coins"] == 500
    finally:
        terminate(proc)
    first_redis = redis_port(log)
    assert not listening(first_redis), "SIGTERM left the embedded Redis running"
    assert list((data / "redis").rglob("*.aof")), "the append-only file is on"

    proc = start(data, port, log)
    try:
        # Same folder: same development secret (the token still works), same balances.
        r = httpx.get(f"http://127.0.0.1:{port}/api/wallet", headers=headers, timeout=10)
        assert r.status_code == 200 and r.json()["coins"] == 500
    finally:
        terminate(proc)
    assert not listening(redis_port(log))
