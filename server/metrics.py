"""Prometheus metrics (prometheus-client). Correct under several worker processes: when
`PROMETHEUS_MULTIPROC_DIR` is set (`python -m server` sets it for `GS_WORKERS` > 1),
every process writes its samples there and `/metrics` sums them."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONNECTIONS_OPEN = Gauge(
    "giftstream_connections_open", "Open WebSocket connections", multiprocess_mode="livesum"
)
SOCKETS_ACCEPTED = Counter(
    "giftstream_sockets_accepted",
    "Room sockets by how room frames reach them: written directly into the socket "
    "(writer=direct) or through a writer task (writer=queued)",
    ["writer"],
)
ROOMS_LIVE = Gauge(
    "giftstream_rooms_live",
    "Live rooms (read from Redis at scrape time)",
    multiprocess_mode="mostrecent",
)
GIFTS = Counter(
    "giftstream_gifts", "Gifts acked (result=acked) or refused (result=<error code>)", ["result"]
)
COINS_SPENT = Counter("giftstream_coins_spent", "Coins debited for gifts (first time, not replays)")
DIAMONDS_CREDITED = Counter(
    "giftstream_diamonds_credited", "Diamonds credited to creators for acked gifts"
)
COINS_RECHARGED = Counter("giftstream_coins_recharged", "Coins bought (first time, not replays)")
DIAMONDS_CASHED_OUT = Counter(
    "giftstream_diamonds_cashout_requested", "Diamonds locked for cash-out requests"
)
BROADCAST_FRAMES = Counter(
    "giftstream_broadcast_frames", "Frames passed to viewers' sockets by the fan-out"
)
BROADCAST_BYTES = Counter("giftstream_broadcast_bytes", "Bytes passed to viewers' sockets")
SLOW_READERS_CLOSED = Counter(
    "giftstream_slow_readers_closed",
    "Sockets closed with 1008 because they held too many unsent bytes",
)
CHAT_LINES = Counter(
    "giftstream_chat_lines",
    "Chat lines posted (result=posted) or refused (result=<code>)",
    ["result"],
)
GIFTS_REFUNDED = Counter(
    "giftstream_gifts_refunded", "Gifts refunded because their room ended before they were shown"
)
COINS_REFUNDED = Counter("giftstream_coins_refunded", "Coins given back for refunded gifts")
GIFT_STEP_FAILURES = Counter(
    "giftstream_gift_step_failures",
    "Gift saga steps 2-4 that failed (the transfer stays pending and is retried)",
    ["step"],
)
GIFT_STEPS_DEFERRED = Counter(
    "giftstream_gift_steps_deferred",
    "Debited gifts left to the sweeper because the finisher's queue was full",
)
PENDING_TRANSFERS = Gauge(
    "giftstream_pending_transfers",
    "Gift transfers pending in Redis at the sweeper's last round (the sweeper backlog)",
    multiprocess_mode="mostrecent",
)
PENDING_OLDEST_SECONDS = Gauge(
    "giftstream_pending_oldest_seconds",
    "Age of the oldest pending gift transfer at the sweeper's last round",
    multiprocess_mode="mostrecent",
)
SWEPT_TRANSFERS = Counter(
    "giftstream_swept_transfers",
    "Pending gift transfers the sweeper finished (result=settled or refunded)",
    ["result"],
)
WS_PROTOCOL_ERRORS = Counter(
    "giftstream_ws_protocol_errors",
    "WebSocket connections closed for a protocol error of the client's: invalid_utf8 "
    "(1007), bad_framing (1002), frame_too_big (1009)",
    ["kind"],
)
FANOUT_WRITE_COST_SECONDS = Gauge(
    "giftstream_fanout_write_cost_seconds",
    "What one socket write of the fan-out costs, as the hub measures it: part=per_write "
    "(the fixed part) and part=per_byte (each byte of the frame)",
    ["part"],
    multiprocess_mode="mostrecent",
)
LOOP_LAG_SECONDS = Histogram(
    "giftstream_loop_lag_seconds",
    "How late the event loop ran a callback due every 10 ms (the longest any task waited)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LOOP_LAG_MAX_SECONDS = Gauge(
    "giftstream_loop_lag_max_seconds",
    "The worst loop lag over the last 5 seconds",
    multiprocess_mode="max",
)
HTTP_REQUESTS_ABORTED = Counter(
    "giftstream_http_requests_aborted",
    "HTTP requests that never arrived whole, by reason: too_large (body over the limit), "
    "timeout (not whole within GS_HTTP_READ_TIMEOUT_S), headers_too_large, "
    "client_disconnected (the client hung up mid-request)",
    ["reason"],
)
REDIS_ERRORS = Counter("giftstream_redis_errors", "Requests or frames that failed on Redis")
GIFT_ACK_SECONDS = Histogram(
    "giftstream_gift_ack_seconds",
    "From a gift frame's arrival to its ack being queued",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FANOUT_FLUSH_SECONDS = Histogram(
    "giftstream_fanout_flush_seconds",
    "Time to encode one coalesced flush of a room and pass it to its viewers",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)

HTTP_REQUESTS = Counter(
    "giftstream_http_requests",
    "HTTP requests answered, by method, route template (e.g. /api/rooms/{room_id}; "
    "unmatched for no route) and status code",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "giftstream_http_request_seconds",
    "From an HTTP request's arrival to the end of its answer, by method and route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
WEBSOCKET_CLOSES = Counter(
    "giftstream_websocket_closes",
    "WebSocket connections ended, by close code: the server's (1008 too slow, 1009 too "
    "big, 1012 restarting, 1013 try later, 4401, 4404) or the peer's (1000, 1001, 1006 "
    "gone without a close)",
    ["code"],
)
BUILD_INFO = Gauge(
    "giftstream_build_info",
    "Always 1: the running giftstream version, its Python, and the Redis server it uses",
    ["version", "python", "redis"],
    multiprocess_mode="max",
)


def set_build_info(*, version: str, redis: str) -> None:
    BUILD_INFO.labels(version=version, python=platform.python_version(), redis=redis).set(1)


def _template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "unmatched"))
    return partial or "unmatched"


class RequestMetrics:
    """ASGI middleware: each HTTP request counted and timed by its route's template (never
    its raw path, which would make a series per room). WebSockets pass through untouched
    (`DirectWrites` must see uvicorn's own `send`); their close codes are counted by the
    protocol, `server.serving.WebSocketProtocol`."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = _template(self.routes, scope)
        method = scope["method"] if scope["method"] in _METHODS else "other"
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status or 500  # the error handler outside answers 500
            raise
        finally:
            # No status: the client went away before any answer.
            shown = str(status) if status else "none"
            HTTP_REQUESTS.labels(method=method, route=route, status=shown).inc()
            HTTP_REQUEST_SECONDS.labels(method=method, route=route).observe(
                time.perf_counter() - started
            )


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, summed over processes when multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
