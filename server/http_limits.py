"""What an HTTP client may send, and how slowly: limits enforced while a request is read,
so that no client can make the server hold a big body or a slow connection.

- `BodyLimit`, ASGI middleware: a request whose Content-Length is over the limit is
  answered 413 `too_large` from its headers alone (before routing, before any login
  check, before one byte of its body is read), and a body without a length (chunked) is
  cut off with the same 413 once it passes the limit. Either way the connection closes,
  so the rest of the body is never read.
- `GuardedHttpToolsProtocol`, uvicorn's httptools protocol with the read rules uvicorn
  lacks: a request must arrive whole, headers and body, within `read_timeout_s` of its
  first byte (else 408 `timeout` and the connection is closed: a client that sends half
  its headers or trickles its body is dropped); its headers may not pass uvicorn's
  `h11_max_incomplete_event_size` (else 431 `headers_too_large`). A connection idle
  between requests, or before its first, is closed after uvicorn's `timeout_keep_alive`.
- `ABORTED`: requests that never arrived whole (cut off, too slow, or the client hung
  up mid-request) are counted in /metrics by reason and logged at most once a second,
  in one line, never with a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from typing import Any, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from server import api, metrics

log = logging.getLogger(__name__)

# h11's default for the same limit, when uvicorn's setting is not given.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024


class AbortedRequests:
    """Counts requests that never arrived whole, by reason, in /metrics, and logs them
    at most once every `interval_s`: one line with the counts since the last one (what
    comes sooner is held for that line, which a timer writes if nothing else does)."""

    def __init__(self, *, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._pending: Counter[str] = Counter()
        self._logged_at = float("-inf")
        self._flush: asyncio.TimerHandle | None = None

    def note(self, reason: str) -> None:
        metrics.HTTP_REQUESTS_ABORTED.labels(reason=reason).inc()
        self._pending[reason] += 1
        wait = self._logged_at + self.interval_s - time.monotonic()
        if wait <= 0:
            self._log()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(wait, self._log)

    def _log(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._logged_at = time.monotonic()
        counts = ", ".join(f"{reason}={n}" for reason, n in sorted(self._pending.items()))
        self._pending.clear()
        if counts:
            log.warning("http requests aborted (since the last such line): %s", counts)


ABORTED = AbortedRequests()


class _BodyTooLarge(Exception):
    pass


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The HTTP parser has already refused a malformed one.
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """413 for a request body over `max_bytes`, decided while it is read (see above)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        ABORTED.note("too_large")
        response = api.error_response(
            "too_large",
            f"the body is larger than {self.max_bytes} bytes",
            headers={"connection": "close"},
        )
        await response(scope, receive, send)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a read timeout per request and a bound on the
    size of its headers (see above). `read_timeout_s` 0 turns the timeout off."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        read_timeout_s: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.read_timeout_s = read_timeout_s
        self.max_header_bytes = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        self._read_timer: asyncio.TimerHandle | None = None
        self._reading = False  # a request has begun and has not arrived whole
        self._in_headers = False
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Before its first request a connection is as idle as between two.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        # Lost while a request was arriving, and not because it was answered already
        # (a body cut off with 413 is closed by the server).
        answered = self.cycle is not None and self.cycle.response_complete
        if self._reading and (self._in_headers or not answered):
            ABORTED.note("client_disconnected")
        self._reading = False
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(
                    431,
                    "headers_too_large",
                    f"the request's headers are larger than {self.max_header_bytes} bytes",
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = True
        self._in_headers = True
        self._header_bytes = 0
        self._disarm()
        if self.read_timeout_s > 0:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = False
        self._disarm()

    def handle_websocket_upgrade(self) -> None:
        # From here on the connection is a WebSocket's, with rules of its own.
        self._reading = False
        self._in_headers = False
        self._disarm()
        super().handle_websocket_upgrade()

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self._reading and not self.transport.is_closing():
            self._refuse(
                408, "timeout", f"the request did not arrive within {self.read_timeout_s:g} s"
            )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer `status` when no answer to this request has begun, and close."""
        ABORTED.note(code)
        self._reading = False
        self._in_headers = False
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            answered = cycle.response_started
            # The app (if it runs) now reads a disconnect and writes nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
        else:
            answered = False
        if not answered:
            response = api.error_response(code, message)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(response.body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + response.body)
        self.transport.close()


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


def uvicorn_protocol(*, read_timeout_s: float) -> type[asyncio.Protocol]:
    """What to pass uvicorn as `http=`: the guarded protocol with this timeout (a
    partial, which pickles for worker processes; uvicorn only calls it)."""
    factory = functools.partial(GuardedHttpToolsProtocol, read_timeout_s=read_timeout_s)
    return cast(type[asyncio.Protocol], factory)
