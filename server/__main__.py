"""`python -m server`: run giftstream with uvicorn.

With no REDIS_URL (or REDIS_CLUSTER_URLS) it first starts an embedded Redis-compatible
server with its data in `GS_DATA_DIR/redis` (append-only file on), and stops it on exit.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from server.embedded import EmbeddedRedis
from server.http_limits import uvicorn_protocol
from server.settings import Settings, SettingsError


def _dev_secret(data_dir: Path) -> str:
    """In development, one secret kept in the data folder: tokens survive a restart and
    every worker process signs with the same key."""
    path = data_dir / "dev-token-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.write_text(secret)
    path.chmod(0o600)
    return secret


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"giftstream: {exc}", file=sys.stderr)
        return 2
    if not os.environ.get("GS_TOKEN_SECRET"):
        # Workers are separate processes that read the environment: give them one secret.
        os.environ["GS_TOKEN_SECRET"] = _dev_secret(settings.data_dir)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: each writes its metrics here and /metrics sums them.
        metrics_dir = settings.data_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None and not settings.redis_cluster_urls:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        embedded.start()
        os.environ["REDIS_URL"] = embedded.url
        print(
            f"giftstream: embedded {Path(embedded.binary).name} at {embedded.url} "
            f"(data in {embedded.data_dir})",
            flush=True,
        )
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with this handler in
    # place that becomes SystemExit, so the `finally` below still stops the embedded Redis.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            "server.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http=uvicorn_protocol(read_timeout_s=settings.http_read_timeout_s),
            # uvicorn's websockets-sansio protocol, leaner per socket (server.direct).
            ws="server.direct:RoomSocketProtocol",
            ws_max_size=settings.max_frame_bytes,
            ws_per_message_deflate=settings.ws_compression,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            log_level="warning",
            timeout_graceful_shutdown=5,
            # Longer than clients keep idle connections, so the server is never the one that
            # closes a connection a client is about to reuse.
            timeout_keep_alive=75,
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
