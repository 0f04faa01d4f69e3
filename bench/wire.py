"""A lean WebSocket client protocol for the load clients (RFC 6455, client side, no
extensions, text frames).

Why not the `websockets` client: on this machine the load clients share two cores with
the server and Redis, and every frame a client spends time on is time taken from the
server being measured. This protocol parses frames in place, out of the bytes the
transport hands it, and gives a subclass the payload's bounds (`on_text(buf, start, end,
now)`): a viewer that only counts events and reads their seq numbers never copies or
decodes a frame. Pings are answered, close frames are echoed, fragmented messages are
reassembled; the server's frames are never masked, the client's always are.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from typing import TypeVar, cast

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
FIN = 0x80
MAX_HANDSHAKE_BYTES = 16 * 1024
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006

Buffer = bytes | bytearray


class HandshakeFailed(Exception):
    """The server answered the upgrade request with something other than 101."""


class ClosedBeforeWelcome(Exception):
    """The connection ended before the server's first frame; `code` is its close code."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed before the welcome (code {code})")
        self.code = code


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte masking `key` (RFC 6455 5.3), as one big integer."""
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")
    return value.to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", FIN | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", FIN | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", FIN | opcode, 0x80 | 127, n)
    return head + key + mask_payload(payload, key)


def upgrade_request(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


class WebSocketClient(asyncio.Protocol):
    """One client connection. Subclasses implement `on_text`. `opened` resolves to None
    once the server accepted the upgrade, or to the exception that prevented it (futures
    carry no exceptions here, so an abandoned one logs nothing); `closed` resolves once the
    connection is gone (`close_code`: the code the server sent, 1006 when none)."""

    def __init__(self, *, host: str, port: int, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._request = upgrade_request(host, port, path)
        self.opened: asyncio.Future[BaseException | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self._buf: Buffer = b""
        self._upgraded = False
        self._fragments: bytearray | None = None
        self._close_sent = False

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but are one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL
        if not self.opened.done():
            self.opened.set_result(ClosedBeforeWelcome(self.close_code))
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_closed()

    def data_received(self, data: bytes) -> None:
        buf: Buffer = self._buf + data if self._buf else data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HANDSHAKE_BYTES:
                    self._fail(HandshakeFailed("no end to the server's upgrade response"))
                self._buf = buf
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                self._fail(HandshakeFailed(status.decode(errors="replace")))
                return
            self._upgraded = True
            self.opened.set_result(None)
            buf = buf[end + 4 :]
        now = time.monotonic()
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1]
            if length & 0x80:
                self._fail(HandshakeFailed("the server sent a masked frame"))
                return
            if length < 126:
                start = pos + 2
            elif length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            if b0 == FIN | OP_TEXT:
                self.on_text(buf, start, end, now)
            else:
                self._other_frame(b0, buf, start, end, now)
            pos = end
        self._buf = buf[pos:] if pos < size else b""

    # --- for subclasses -------------------------------------------------------------

    def on_text(self, buf: Buffer, start: int, end: int, now: float) -> None:
        """One complete text message: `buf[start:end]`, received at `now` (monotonic)."""

    def on_closed(self) -> None:
        """The connection is gone."""

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self._close_sent:
            self.transport.write(client_frame(OP_TEXT, payload))

    def close(self, code: int = 1000) -> None:
        """Send a close frame and drop the connection without waiting for the echo."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._upgraded and not self._close_sent:
            self._close_sent = True
            transport.write(client_frame(OP_CLOSE, code.to_bytes(2, "big")))
        transport.close()

    # --- internals ------------------------------------------------------------------

    def _other_frame(self, b0: int, buf: Buffer, start: int, end: int, now: float) -> None:
        opcode = b0 & 0x0F
        final = bool(b0 & FIN)
        if opcode == OP_PING:
            if self.transport is not None and not self._close_sent:
                self.transport.write(client_frame(OP_PONG, bytes(buf[start:end])))
        elif opcode == OP_CLOSE:
            self.close_code = (
                int.from_bytes(buf[start : start + 2], "big") if end - start >= 2 else 1005
            )
            self.close(self.close_code if self.close_code != CLOSE_NO_STATUS else 1000)
        elif opcode in (OP_TEXT, OP_BINARY) and final:
            self.on_text(buf, start, end, now)
        elif opcode in (OP_TEXT, OP_BINARY):
            self._fragments = bytearray(buf[start:end])
        elif opcode == OP_CONTINUATION and self._fragments is not None:
            self._fragments += buf[start:end]
            if final:
                message, self._fragments = bytes(self._fragments), None
                self.on_text(message, 0, len(message), now)

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_result(exc)
        if self.transport is not None:
            self.transport.abort()


P = TypeVar("P", bound=WebSocketClient)


async def connect(factory: Callable[[], P], host: str, port: int, *, timeout: float) -> P:
    """Open a connection made by `factory` and wait for the server to accept the upgrade."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, protocol = await loop.create_connection(factory, host, port)
        try:
            failure = await protocol.opened
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abort()
            raise
    if failure is not None:
        raise failure
    return protocol
