"""Room sockets at the transport: direct writes, a lean connection protocol, and clean
stops for peers that stop reading.

Direct writes. Room frames go straight into a socket's transport, as websockets'
`broadcast` does, instead of through a writer task and the ASGI send path per socket.
Under uvicorn's `websockets-sansio` protocol (and `RoomSocketProtocol`, what
`python -m server` runs) the ASGI `send` callable is a method of the connection's
protocol object, which owns the transport. `DirectWrites`, the outermost ASGI
middleware, finds that object and puts a `DirectSocket` for it in the scope
(`SCOPE_KEY`); under any other server nothing is put there and the endpoint falls back to
a writer task per socket (`server.viewers.QueuedViewer`).

A `DirectSocket` writes whole WebSocket frames with `transport.write`, which never waits:
the frame built once per flush (`Outgoing.wire`) goes to every socket as it is. Frames the
protocol itself writes (answers sent the ASGI way, pings, the close) are whole frames
written in the same thread, so the two never interleave within a frame.

Bounded, and seen. A socket's kernel send buffer is set small (`sndbuf_bytes`), so what a
peer has not read piles up where the server can count it: the transport's write buffer.
A frame is refused (and the caller closes the socket as too slow, 1008) when that buffer
holds `limit_bytes` or more, or when it has stayed above its high-water mark (64 KiB) for
`stall_s`: a reader that has stopped, found long before a ping goes unanswered. A socket
given up on is aborted with a reset (`SO_LINGER` 0), so the kernel frees its buffers at
once instead of holding them in FIN-WAIT-1 for a peer that reads nothing.

`RoomSocketProtocol` is uvicorn's sans-I/O WebSocket protocol with less kept per
connection (no handshake objects after the accept, a list instead of an `asyncio.Queue`
for received messages, a flag instead of an `asyncio.Event`), its pauses timed for the
stall rule, and protocol errors from clients (invalid UTF-8, bad framing) counted in
`/metrics` and logged at most once a second, in one line, never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from starlette.routing import Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import PayloadTooBig, ProtocolError

from server import metrics
from server.protocol import Outgoing

SCOPE_KEY = "giftstream.direct_socket"
_LINGER_RESET = struct.pack("ii", 1, 0)

log = logging.getLogger(__name__)


def abort_with_reset(transport: asyncio.Transport) -> None:
    """Drop the connection now, unsent bytes and all, with a TCP reset: the kernel frees
    the socket at once (a plain close would keep its unsent bytes in FIN-WAIT-1 for as
    long as the peer reads nothing)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()


class Bundle:
    """Frames for one socket in one write, in order: the same bytes for every socket that
    gets them (a room_state riding with a flush's events costs no write of its own)."""

    __slots__ = ("frames", "_wire")

    def __init__(self, *frames: Outgoing) -> None:
        self.frames = frames
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = b"".join(frame.wire for frame in self.frames)
        return self._wire


class DirectSocket:
    __slots__ = ("_protocol", "_stall_s")

    def __init__(
        self, protocol: WebSocketsSansIOProtocol, *, sndbuf_bytes: int = 0, stall_s: float = 0
    ) -> None:
        self._protocol = protocol
        self._stall_s = stall_s
        if sndbuf_bytes > 0:
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf_bytes)
                except OSError:
                    pass

    def write(self, frame: Outgoing | Bundle, *, limit_bytes: int) -> bool:
        """Write `frame` (or a bundle of frames, in one write) now, without waiting. False
        if the peer is too slow (`limit_bytes` or more still unsent, or stalled for
        `stall_s`): nothing was written. A socket that is closing takes nothing more and
        is not slow: True."""
        protocol = self._protocol
        transport = protocol.transport
        if protocol.close_sent or transport.is_closing():
            return True
        if transport.get_write_buffer_size() >= limit_bytes:
            return False
        paused_at: float | None = getattr(protocol, "paused_at", None)
        if paused_at is not None and self._stall_s and time.monotonic() - paused_at > self._stall_s:
            return False
        conn = protocol.conn
        if conn.extensions:
            # Per-message compression was negotiated: compressed per socket, by the protocol.
            for one in (frame,) if isinstance(frame, Outgoing) else frame.frames:
                conn.send_text(one.data)
            transport.write(b"".join(conn.data_to_send()))
        else:
            transport.write(frame.wire)
        return True

    def abort_after(self, delay_s: float) -> None:
        """Reset the connection unless it has closed within `delay_s`: for a peer that
        reads nothing, a close frame queued behind what it has not read would never reach
        it, and its socket and buffers would stay forever."""
        asyncio.get_running_loop().call_later(delay_s, _abort_if_open, self._protocol)


def _abort_if_open(protocol: WebSocketsSansIOProtocol) -> None:
    # Not once the connection is gone: its file descriptor may belong to another by now.
    if not protocol.disconnected:
        abort_with_reset(protocol.transport)


class DirectWrites:
    """ASGI middleware: a `DirectSocket` in the scope of every WebSocket that allows one.

    The WebSocket `routes` it is given are served from here, past the router, Starlette's
    exception middleware and its session wrappers: each of those is a suspended coroutine
    frame per socket for the connection's whole life (their endpoints answer every error
    themselves)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[WebSocketRoute] = (),
        sndbuf_bytes: int = 0,
        stall_s: float = 0,
    ) -> None:
        self.app = app
        self._routes = tuple(routes)
        self._sndbuf_bytes = sndbuf_bytes
        self._stall_s = stall_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            protocol = getattr(send, "__self__", None)
            if isinstance(protocol, WebSocketsSansIOProtocol):
                scope[SCOPE_KEY] = DirectSocket(
                    protocol, sndbuf_bytes=self._sndbuf_bytes, stall_s=self._stall_s
                )
            for route in self._routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await route.endpoint(WebSocket(scope, receive=receive, send=send))
                    return
        await self.app(scope, receive, send)


# --- the connection protocol ---------------------------------------------------------


class _Inbox:
    """What the protocol hands the app through `receive`: a few messages at most (reading
    pauses while one waits), so a list and one future instead of asyncio.Queue's three
    deques (about 2 KB a socket)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Flag:
    """`asyncio.Event`'s set/clear/wait without its deque of waiters."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter


class _ProtocolErrors:
    """Protocol errors from clients: counted in `/metrics`, logged at most once a second
    in one line (how many of each kind since the last line, and the latest peer)."""

    def __init__(self, *, interval_s: float = 1.0) -> None:
        self._interval_s = interval_s
        self._counts: Counter[str] = Counter()
        self._last_peer = ""
        self._last_logged = -1e9
        self._pending: asyncio.TimerHandle | None = None

    def record(self, kind: str, peer: tuple[str, int] | None) -> None:
        metrics.WS_PROTOCOL_ERRORS.labels(kind=kind).inc()
        self._counts[kind] += 1
        self._last_peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        wait = self._last_logged + self._interval_s - loop.time()
        if wait <= 0:
            self._log()
        elif self._pending is None:
            self._pending = loop.call_later(wait, self._log)

    def _log(self) -> None:
        self._pending = None
        if not self._counts:
            return
        self._last_logged = asyncio.get_running_loop().time()
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(self._counts.items()))
        self._counts.clear()
        log.warning(
            "websocket protocol errors from clients: %s (latest from %s); closed",
            what,
            self._last_peer,
        )


PROTOCOL_ERRORS = _ProtocolErrors()


class RoomSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, leaner per connection, with timed write
    pauses and quiet, counted protocol errors (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        # When the transport's write buffer last rose above its high-water mark and has
        # stayed there (None: below it).
        self.paused_at: float | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.paused_at is None:
            self.paused_at = time.monotonic()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused_at = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.paused_at = None

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            self._forget_handshake()

    def _forget_handshake(self) -> None:
        # The handshake's request and response (their headers) are not needed again.
        self.request = None  # type: ignore[assignment]
        self.response = None  # type: ignore[assignment]
        conn = self.conn
        if not conn.reader.buffer:
            # The parser's own frame still holds the request it parsed; a new parser for
            # frames only (the handshake is done) holds nothing. Only while no byte of a
            # frame has been read: nothing is lost in the switch.
            conn.parser = conn.parse()
            next(conn.parser)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type != "text":
            super().send_receive_event_to_app()
            return
        # uvicorn's own text path, but an invalid frame is a client's error: counted and
        # closed (1007) without a traceback.
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            PROTOCOL_ERRORS.record("invalid_utf8", self.client)
            self.conn.send_close(1007, "invalid UTF-8")
            self.handle_parser_exception()
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def handle_parser_exception(self) -> None:
        exc = self.conn.parser_exc
        if isinstance(exc, PayloadTooBig):
            PROTOCOL_ERRORS.record("frame_too_big", self.client)
        elif isinstance(exc, ProtocolError):
            PROTOCOL_ERRORS.record("bad_framing", self.client)
        super().handle_parser_exception()

    def keepalive_timeout(self) -> None:
        # A peer that has not answered a ping for the whole timeout reads nothing: its
        # close frame would wait behind what it has not read. Reset it, freeing its buffers.
        super().keepalive_timeout()
        if not self.disconnected:
            abort_with_reset(self.transport)
