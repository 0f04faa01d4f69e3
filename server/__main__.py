"""`python -m server` (the `giftstream` command): run giftstream with uvicorn.

Every option is also an environment variable; an option given overrides the variable.
With no REDIS_URL (or REDIS_CLUSTER_URLS) it first starts an embedded Redis-compatible
server with its data in `GS_DATA_DIR/redis` (append-only file on), and stops it on exit.
It binds its address before anything else starts: a port in use or a host that does not
resolve is one line on stderr and exit code 1; a bad setting is exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import FrameType

import uvicorn

from server import logs
from server.embedded import EmbeddedRedis, EmbeddedRedisError
from server.http_limits import uvicorn_protocol
from server.serving import STOP_SIGNALS, Supervisor, WebSocketProtocol, serve
from server.settings import LOG_FORMATS, LOG_LEVELS, Settings, SettingsError

log = logging.getLogger("server")

# option -> the environment variable it sets
OPTIONS = {
    "host": "GS_HOST",
    "port": "GS_PORT",
    "workers": "GS_WORKERS",
    "redis_url": "REDIS_URL",
    "redis_cluster_urls": "REDIS_CLUSTER_URLS",
    "redis_server": "GS_REDIS_SERVER",
    "data_dir": "GS_DATA_DIR",
    "env": "GS_ENV",
    "log_format": "GS_LOG_FORMAT",
    "log_level": "GS_LOG_LEVEL",
    "drain_s": "GS_DRAIN_S",
}


def version() -> str:
    try:
        return metadata.version("giftstream")
    except metadata.PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="giftstream",
        description="Run the giftstream server: live rooms over WebSocket, coins and "
        "diamonds in Redis. Every option is also an environment variable (named in "
        "brackets); an option overrides it. Other settings: the README's Configuration "
        "table (server/settings.py).",
        epilog="Without REDIS_URL an embedded Redis-compatible server runs with its data in "
        "GS_DATA_DIR/redis. SIGTERM drains (readiness 503, WebSockets closed with 1012 "
        "over GS_DRAIN_S) and exits 0; Ctrl-C stops at once.",
    )
    add = p.add_argument
    add("--host", help="address to listen on [GS_HOST] (default 127.0.0.1; 0.0.0.0 for all)")
    add("--port", help="port to listen on, 0 for any free one [GS_PORT] (default 8000)")
    add("--workers", help="worker processes sharing the port [GS_WORKERS] (default 1)")
    add("--redis-url", metavar="URL", help="Redis to use, redis://host:6379/0 [REDIS_URL]")
    add(
        "--redis-cluster-urls",
        metavar="URLS",
        help="a Redis Cluster: comma-separated seed URLs [REDIS_CLUSTER_URLS]",
    )
    add(
        "--redis-server",
        metavar="CMD",
        help="embedded server without a Redis URL: auto, redis-server, or a path "
        "[GS_REDIS_SERVER] (default auto: the one that wrote the data folder)",
    )
    add("--data-dir", metavar="DIR", help="the embedded Redis's data [GS_DATA_DIR] (.data)")
    add("--env", choices=("development", "production"), help="[GS_ENV] (default development)")
    add("--log-format", choices=LOG_FORMATS, help="text or json lines [GS_LOG_FORMAT]")
    add("--log-level", choices=LOG_LEVELS, help="[GS_LOG_LEVEL] (default info)")
    add(
        "--drain-s",
        metavar="SECONDS",
        help="on SIGTERM, close the WebSockets over this long [GS_DRAIN_S] (default 5)",
    )
    add("--version", action="version", version=f"giftstream {version()}")
    return p


def overrides(args: argparse.Namespace) -> dict[str, str]:
    return {env: str(value) for opt, env in OPTIONS.items() if (value := getattr(args, opt))}


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


class BindError(Exception):
    pass


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port`, inheritable by worker processes.
    `BindError` saying why not, in one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        why = exc.strerror
        raise BindError(f"cannot resolve host {host!r} (GS_HOST / --host): {why}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}"
        why = {
            errno.EADDRINUSE: "the address is already in use (another server there?): "
            "stop it or choose another port (GS_PORT / --port)",
            errno.EADDRNOTAVAIL: "no such address on this machine (GS_HOST / --host)",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise BindError(f"cannot listen on {where}: {why}") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _StopBeforeServing(Exception):
    pass


def _stop_before_serving(signum: int, frame: FrameType | None) -> None:
    raise _StopBeforeServing


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    given = overrides(args)
    try:
        settings = Settings.from_env({**os.environ, **given})
    except SettingsError as exc:
        message = str(exc)
        for opt, env in OPTIONS.items():
            if env in given and message.startswith(env):
                message = f"--{opt.replace('_', '-')} ({env})" + message[len(env) :]
        print(f"giftstream: {message}", file=sys.stderr)
        return 2
    try:
        sock = bind(settings.host, settings.port)
    except BindError as exc:
        print(f"giftstream: {exc}", file=sys.stderr)
        return 1
    # Worker processes read the environment: the options go there too.
    os.environ.update(given)
    logs.configure(log_format=settings.log_format, level=settings.log_level)
    # A stop signal before the server serves still stops what was started.
    previous = {sig: signal.signal(sig, _stop_before_serving) for sig in STOP_SIGNALS}
    embedded: EmbeddedRedis | None = None
    try:
        if not os.environ.get("GS_TOKEN_SECRET"):
            # Workers are separate processes that read the environment: give them one secret.
            os.environ["GS_TOKEN_SECRET"] = _dev_secret(settings.data_dir)
        if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several workers: each writes its metrics here and /metrics sums them.
            metrics_dir = settings.data_dir / "prometheus"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
        redis_note = ""
        if settings.redis_url is None and not settings.redis_cluster_urls:
            embedded = EmbeddedRedis(settings.data_dir / "redis", binary=settings.redis_server)
            try:
                embedded.start()
            except EmbeddedRedisError as exc:
                print(f"giftstream: embedded Redis: {exc}", file=sys.stderr)
                return 1
            os.environ["REDIS_URL"] = embedded.url
            log.info(
                "embedded %s at %s (data in %s)", embedded.name, embedded.url, embedded.data_dir
            )
            redis_note = f", embedded {embedded.name}"
        url = _url(settings.host, sock)
        workers = settings.workers
        plural = "s" if workers > 1 else ""

        def announce() -> None:
            log.info(
                "giftstream %s listening on %s (%d worker%s%s)",
                version(),
                url,
                workers,
                plural,
                redis_note,
            )

        return _serve(settings, sock, announce)
    except _StopBeforeServing:
        return 0
    finally:
        # Stopping is bounded (the Redis gets 10 s); signals meanwhile would only cut it short.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        sock.close()
        if embedded is not None:
            embedded.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(settings: Settings, sock: socket.socket, announce: Callable[[], None]) -> int:
    config = uvicorn.Config(
        "server.app:create_app",
        factory=True,
        host=settings.host,
        port=sock.getsockname()[1],
        workers=settings.workers,
        http=uvicorn_protocol(read_timeout_s=settings.http_read_timeout_s),
        ws=WebSocketProtocol,  # server.direct's lean websockets-sansio, drainable
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_config=None,
        log_level=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
        # Longer than clients keep idle connections, so the server is never the one that
        # closes a connection a client is about to reuse.
        timeout_keep_alive=75,
    )
    if settings.workers == 1:
        return serve(config, [sock], drain_s=settings.drain_s, on_started=announce)
    supervisor = Supervisor(
        config,
        [sock],
        workers=settings.workers,
        drain_s=settings.drain_s,
        # Each worker drains, then waits for what is in flight, then ends its lifespan.
        stop_timeout_s=settings.drain_s + settings.shutdown_timeout_s + 10,
        log_format=settings.log_format,
        log_level=settings.log_level,
        on_ready=announce,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
