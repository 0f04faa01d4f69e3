"""The gevent twin of `giftstream_client.room`'s connection, for Locust (which runs on
gevent): one room socket on a gevent socket, with the same frames
(`giftstream_client.frames`) and the same reconnect rule (`giftstream_client.reconnect`)
as the asyncio client.

`websockets`' sans-I/O protocol makes the opening handshake (the request, and the
checks of the server's answer) and every frame this client sends (masked, as RFC 6455
wants). What the server sends is read by `ServerFrames`, below: a load generator's cost
per received frame decides how many viewers one core can watch with, and reading the
server's unmasked frames in place costs a fifth of a general parser's. The caller gets
each payload's bytes, which a viewer can scan for seqs (`frames.scan_events`) without
decoding them. With `read_with` no greenlet waits on the socket at all: gevent's event
loop calls back when it is readable, which saves two greenlet switches and a failed
`recv` per frame.

Needs gevent (the `load` extra); importing this module does not monkey-patch anything.
"""

from __future__ import annotations

import functools
import os
import socket as std_socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket as green_socket
from gevent.lock import Semaphore
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from giftstream_client.errors import ProtocolError, RoomClosed, ServerUnreachable
from giftstream_client.frames import ChatRequest, GiftRequest, Welcome, loads, parse

RECV_BYTES = 64 * 1024
MAX_FRAME_BYTES = 2**22
MAX_HANDSHAKE_BYTES = 16 * 1024
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006


class ServerFrames:
    """The server's side of a WebSocket read in place (RFC 6455 section 5): `feed(data)`
    returns the complete messages and control frames in it as `(opcode, payload)`;
    fragmented messages are joined, a partial frame waits for the next bytes. Pure.

    Raises `ProtocolError` for what a server must not send: a masked frame, reserved
    bits (no extension is negotiated), a fragmented or oversized control frame, a frame
    over `max_size`. Text is not checked for UTF-8 here: whoever decodes it does."""

    __slots__ = ("max_size", "_rest", "_parts", "_opcode")

    def __init__(self, *, max_size: int = MAX_FRAME_BYTES) -> None:
        self.max_size = max_size
        self._rest = b""
        self._parts: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            if b1 & 0x80 or b0 & 0x70:
                raise ProtocolError("the server sent a masked frame or reserved bits")
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            if length > self.max_size:
                raise ProtocolError(f"a frame of {length} bytes (at most {self.max_size})")
            stop = pos + head + length
            if stop > end:
                break
            payload = data[pos + head : stop]
            pos = stop
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode >= OP_CLOSE:
                if not fin or length > 125:
                    raise ProtocolError("a fragmented or oversized control frame")
                out.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if not self._parts:
                    raise ProtocolError("a continuation frame with nothing to continue")
                self._parts.append(payload)
                if fin:
                    out.append((self._opcode, b"".join(self._parts)))
                    self._parts = []
            elif fin:
                if self._parts:
                    raise ProtocolError("a new message inside a fragmented one")
                out.append((opcode, payload))
            else:
                self._opcode, self._parts = opcode, [payload]
        if pos < end:
            self._rest = data[pos:]
        return out


class GreenRoomConnection:
    """One welcomed WebSocket to a room, for greenlets. One greenlet reads (`recv`), or
    the event loop does (`read_with`); any greenlet may `send` (writes are serialised).
    `welcome` is the first frame, decoded."""

    def __init__(self, sock: green_socket.socket, protocol: ClientProtocol, url: str) -> None:
        self._sock = sock
        self._protocol = protocol
        self._url = url.split("?", 1)[0]
        self._frames = ServerFrames()
        self._ready: deque[bytes] = deque()
        self._write_lock = Semaphore()
        self._eof = False
        self._close_code: int | None = None  # as the server's close frame said
        self._close_reason = ""
        self._watcher: Any = None
        self._on_frame: Callable[[bytes], None] | None = None
        self._on_end: Callable[[int], None] | None = None
        self.welcome_json: dict[str, Any] = {}
        self.welcome: Welcome | None = None

    @classmethod
    def open(
        cls, url: str, *, timeout_s: float = 15.0, welcome: bool = True
    ) -> GreenRoomConnection:
        """Connect to `url` (`giftstream_client.room.room_url`) and read the welcome.
        Raises what `RoomConnection.open` raises: `RoomClosed` when the server closes
        first, `ServerUnreachable` when there is no WebSocket there, `ProtocolError`."""
        public = url.split("?", 1)[0]
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise ServerUnreachable(public, str(exc)) from exc
        if uri.secure:
            raise ServerUnreachable(public, "wss:// is not supported by the gevent client yet")
        try:
            sock = green_socket.create_connection((uri.host, uri.port), timeout=timeout_s)
        except ConnectionRefusedError as exc:
            raise ServerUnreachable(public, "connection refused (is the server running?)") from exc
        except (OSError, gevent.Timeout) as exc:
            raise ServerUnreachable(public, f"{type(exc).__name__}: {exc}") from exc
        sock.setsockopt(std_socket.IPPROTO_TCP, std_socket.TCP_NODELAY, 1)
        protocol = ClientProtocol(uri, max_size=MAX_FRAME_BYTES)
        self = cls(sock, protocol, url)
        try:
            with gevent.Timeout(timeout_s, TimeoutError):
                self._handshake()
                if welcome:
                    self._read_welcome()
        except TimeoutError:
            self.abort()
            raise ServerUnreachable(public, "no welcome in time") from None
        except OSError as exc:
            self.abort()
            raise ServerUnreachable(public, f"{type(exc).__name__}: {exc}") from exc
        except (RoomClosed, ProtocolError, ServerUnreachable):
            self.abort()
            raise
        sock.settimeout(None)
        return self

    def _handshake(self) -> None:
        """The upgrade: websockets writes the request and checks the answer's headers,
        which are handed to it exactly; what follows them is frames, read here."""
        protocol = self._protocol
        protocol.send_request(protocol.connect())
        self._write(protocol.data_to_send())
        received = b""
        while (head_end := received.find(b"\r\n\r\n")) < 0:
            if len(received) > MAX_HANDSHAKE_BYTES:
                raise ServerUnreachable(self._url, "an upgrade answer too long")
            data = self._sock.recv(RECV_BYTES)
            if not data:
                raise ServerUnreachable(self._url, "closed during the upgrade")
            received += data
        protocol.receive_data(received[: head_end + 4])
        for event in protocol.events_received():
            if isinstance(event, Response) and protocol.handshake_exc is not None:
                raise ServerUnreachable(self._url, f"HTTP {event.status_code} to the upgrade")
        if protocol.state is not State.OPEN:
            raise ServerUnreachable(self._url, "the upgrade failed")
        rest = received[head_end + 4 :]
        if rest:
            self._ready.extend(self._take(rest))

    def _read_welcome(self) -> None:
        raw = self.recv()
        self.welcome_json = loads(raw)
        frame = parse(self.welcome_json)
        if not isinstance(frame, Welcome):
            kind = self.welcome_json.get("type")
            raise ProtocolError(f"the first frame is {kind!r}, not a welcome")
        self.welcome = frame

    # --- reading ----------------------------------------------------------------------------

    def _take(self, data: bytes) -> list[bytes]:
        """Feed received bytes (b"": the end); the messages in them. Answers pings and
        the server's close (without blocking: see `_write_soon`)."""
        if not data:
            self._eof = True
            return []
        messages = []
        for opcode, payload in self._frames.feed(data):
            if opcode == OP_TEXT or opcode == OP_BINARY:
                messages.append(payload)
            elif opcode == OP_CLOSE:
                self._on_close_frame(payload)
            elif opcode == OP_PING:
                self._reply(functools.partial(self._protocol.send_pong, payload))
        return messages

    def _on_close_frame(self, payload: bytes) -> None:
        if len(payload) >= 2:
            self._close_code = int.from_bytes(payload[:2], "big")
            self._close_reason = payload[2:].decode("utf-8", "replace")
        else:
            self._close_code = CLOSE_NO_STATUS
        # Echo it (unless we sent ours first); the server then closes the TCP connection.
        self._reply(lambda: self._protocol.send_close(self._close_code or CLOSE_NO_STATUS))

    def _reply(self, send: Callable[[], None]) -> None:
        if self._protocol.state is State.OPEN:
            send()
            self._write_soon(self._protocol.data_to_send())

    def _closed(self) -> RoomClosed:
        code = self._close_code
        if code is None:
            code = CLOSE_ABNORMAL
        return RoomClosed(code, self._close_reason)

    @property
    def ended(self) -> bool:
        return self._eof

    @property
    def close_code(self) -> int | None:
        """The server's close code once the connection has ended (1006: no close frame)."""
        return self._closed().code if self._eof else None

    def recv(self) -> bytes:
        """The next text frame's bytes; raises `RoomClosed` (with the server's close code,
        1006 without one) once the connection has ended."""
        ready = self._ready
        while not ready:
            if self._eof:
                raise self._closed()
            try:
                data = self._sock.recv(RECV_BYTES)
            except OSError:
                data = b""
            ready.extend(self._take(data))
        return ready.popleft()

    def read_with(self, on_frame: Callable[[bytes], None], on_end: Callable[[int], None]) -> None:
        """From now on, hand every text frame's bytes to `on_frame` as it arrives, and the
        close code to `on_end` once the connection has ended (after which nothing more
        is called). Both are called from gevent's event loop itself: they must not block
        (no gevent I/O or sleep; spawn a greenlet for that), and what they raise is
        reported by gevent's hub and dropped. `recv` must not be used any more."""
        self._on_frame, self._on_end = on_frame, on_end
        while self._ready:
            self._deliver(self._ready.popleft())
        if self._eof:
            self._end()
            return
        self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._sock.fileno(), RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            messages = self._take(data)
        except ProtocolError:
            self._eof = True
            self._close_code = 1002
            messages = []
        for message in messages:
            self._deliver(message)
        if self._eof:
            self._end()

    def _deliver(self, data: bytes) -> None:
        on_frame = self._on_frame
        if on_frame is None:
            return
        try:
            on_frame(data)
        except Exception:  # noqa: BLE001 - a callback's bug must not stop the loop
            gevent.get_hub().handle_error(on_frame, *sys.exc_info())

    def _end(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()
        on_end, self._on_end = self._on_end, None
        self._on_frame = None
        code = self._closed().code
        self.abort()
        if on_end is not None:
            on_end(code)

    # --- writing ----------------------------------------------------------------------------

    def send(self, frame: GiftRequest | ChatRequest | bytes) -> None:
        """Send a frame (raises `RoomClosed` once the connection is closing)."""
        data = frame if isinstance(frame, bytes) else frame.encode()
        with self._write_lock:
            if self._protocol.state is not State.OPEN or self._eof:
                raise self._closed()
            self._protocol.send_text(data)
            self._write(self._protocol.data_to_send())

    def _write(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                if chunk:
                    self._sock.sendall(chunk)
                else:  # the protocol's end of stream: half-close
                    self._sock.shutdown(std_socket.SHUT_WR)
        except OSError:
            self._eof = True

    def _write_soon(self, chunks: list[bytes]) -> None:
        """Write from the event loop without blocking it: now if the writer lock is free
        and the socket takes it all, else in a greenlet of its own."""
        if not chunks:
            return
        if not self._write_lock.acquire(blocking=False):
            gevent.spawn(self._write_later, chunks)
            return
        try:
            fd = self._sock.fileno()
            for i, chunk in enumerate(chunks):
                if not chunk:
                    self._sock.shutdown(std_socket.SHUT_WR)
                    continue
                try:
                    sent = os.write(fd, chunk)
                except BlockingIOError:
                    sent = 0
                if sent < len(chunk):
                    gevent.spawn(self._write_later, [chunk[sent:], *chunks[i + 1 :]])
                    return
        except OSError:
            self._eof = True
        finally:
            self._write_lock.release()

    def _write_later(self, chunks: list[bytes]) -> None:
        with self._write_lock:
            self._write(chunks)

    # --- closing ----------------------------------------------------------------------------

    def start_close(self, code: int = 1000) -> None:
        """Send a close frame: the reader then sees the server's reply and the end (its
        `recv` raises `RoomClosed`, or `read_with`'s `on_end` is called). Safe from any
        greenlet."""
        with self._write_lock:
            if self._protocol.state is State.OPEN and not self._eof:
                self._protocol.send_close(code)
                self._write(self._protocol.data_to_send())

    def close(self, *, timeout_s: float = 2.0) -> None:
        """The closing handshake (a close frame, the server's reply, its TCP close), at
        most `timeout_s`; then the socket is closed whatever happened. Only for a
        connection nobody else reads (else: `start_close`, and let the reader finish)."""
        try:
            self.start_close()
            with gevent.Timeout(timeout_s, TimeoutError):
                while not self._eof:
                    self.recv()
        except (RoomClosed, TimeoutError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket now (no handshake)."""
        self._eof = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()
        try:
            self._sock.close()
        except OSError:
            pass
