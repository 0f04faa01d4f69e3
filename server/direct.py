"""Direct writes: room frames go straight into a socket's transport, as websockets'
`broadcast` does, instead of through one writer task and the ASGI send path per socket.

Under uvicorn's `websockets-sansio` protocol (what `python -m server` runs) the ASGI
`send` callable is a method of the connection's protocol object, which owns the asyncio
transport. `DirectWrites`, the outermost ASGI middleware, finds that object and puts a
`DirectSocket` for it in the scope (`SCOPE_KEY`); under any other server nothing is put
there and the endpoint falls back to a writer task per socket (`hub.QueuedViewer`).

A `DirectSocket` writes whole WebSocket frames with `transport.write`, which never waits:
the frame built once per flush (`Outgoing.wire`) goes to every socket as it is. Frames the
protocol itself writes (acks sent the ASGI way, pings, the close) are whole frames
written in the same thread, so the two never interleave within a frame. The socket's
bounded queue is its transport's write buffer: above `limit_bytes` unsent, a frame is
refused and the caller closes the socket as too slow.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.protocol import Outgoing

SCOPE_KEY = "giftstream.direct_socket"


class DirectSocket:
    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def write(self, frame: Outgoing, *, limit_bytes: int) -> bool:
        """Write `frame` now, without waiting. False if `limit_bytes` or more are still
        unsent (the peer is not reading): nothing was written. A socket that is closing
        takes nothing more and is not slow: True."""
        protocol = self._protocol
        transport = protocol.transport
        if protocol.close_sent or transport.is_closing():
            return True
        if transport.get_write_buffer_size() >= limit_bytes:
            return False
        conn = protocol.conn
        if conn.extensions:
            # Per-message compression was negotiated: compressed per socket, by the protocol.
            conn.send_text(frame.data)
            transport.write(b"".join(conn.data_to_send()))
        else:
            transport.write(frame.wire)
        return True

    def unsent_bytes(self) -> int:
        return self._protocol.transport.get_write_buffer_size()

    def abort_after(self, delay_s: float) -> None:
        """Drop the connection, unsent bytes and all, unless it has closed within
        `delay_s`: for a peer that reads nothing, a close frame queued behind what it has
        not read would never reach it, and its socket and buffers would stay forever."""
        transport = self._protocol.transport
        asyncio.get_running_loop().call_later(delay_s, transport.abort)


class DirectWrites:
    """ASGI middleware: a `DirectSocket` in the scope of every WebSocket that allows one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            protocol = getattr(send, "__self__", None)
            if isinstance(protocol, WebSocketsSansIOProtocol):
                scope[SCOPE_KEY] = DirectSocket(protocol)
        await self.app(scope, receive, send)
