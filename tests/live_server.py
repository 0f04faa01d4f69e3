"""A real giftstream server process on a free port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from server.embedded import free_port

TEST_SECRET = "test-secret-not-for-production-0123456789"


class LiveServer:
    """`python -m server` on 127.0.0.1 and a free port, with the given environment."""

    def __init__(self, redis_url: str, *, log_dir: Path, env: dict[str, str] | None = None):
        self.redis_url = redis_url
        self.port = free_port()
        self.log_dir = log_dir
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 20.0) -> LiveServer:
        env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "GS_TOKEN_SECRET": TEST_SECRET,
            "GS_HOST": "127.0.0.1",
            "GS_PORT": str(self.port),
            "GS_PAYOUT_DELAY_MS": "300",
            "GS_SWEEP_INTERVAL_S": "0.5",
            "GS_SWEEP_MIN_AGE_MS": "1000",
            "GS_PRESENCE_TTL_S": "3",
            **self.extra_env,
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"server-{self.port}.log", "ab")  # noqa: SIM115 - closed by the child
        # The same entry point a user and the container start.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start, see {self.log_dir}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not answer /healthz in time")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
