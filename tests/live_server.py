"""A real giftstream server process on a free port, for end-to-end tests: the same
`ServerProcess` the demo, the load runner and the benchmark start, with test settings."""

from __future__ import annotations

from pathlib import Path

from server.child import ServerProcess
from server.embedded import free_port

TEST_SECRET = "test-secret-not-for-production-0123456789"


class LiveServer(ServerProcess):
    """`python -m server` on `redis_url`, quick timers, its log in `log_dir`; `env`
    overrides any of it."""

    def __init__(self, redis_url: str, *, log_dir: Path, env: dict[str, str] | None = None):
        port = free_port()
        super().__init__(
            port=port,
            log_path=log_dir / f"server-{port}.log",
            env={
                "REDIS_URL": redis_url,
                "GS_TOKEN_SECRET": TEST_SECRET,
                "GS_PAYOUT_DELAY_MS": "300",
                "GS_SWEEP_INTERVAL_S": "0.5",
                "GS_SWEEP_MIN_AGE_MS": "1000",
                "GS_PRESENCE_TTL_S": "3",
                **(env or {}),
            },
        )

    def start(self, *, timeout_s: float = 20.0) -> LiveServer:
        super().start(timeout_s=timeout_s)
        return self
