"""The gevent twin of `giftstream_client.room`'s connection, for Locust (which runs on
gevent): one room socket on a gevent socket, spoken with `websockets`' sans-I/O
protocol, the same frames (`giftstream_client.frames`) and the same reconnect rule
(`giftstream_client.reconnect`) as the asyncio client.

Why not a blocking WebSocket library: a load generator's cost per received frame is
what limits how many viewers one core can watch with. Here a frame costs one parse by
`websockets.ClientProtocol` over bytes read many frames at a time, and the caller gets
the payload's bytes, which a viewer can scan for seqs (`frames.scan_events`) without
decoding them.

Needs gevent (the `load` extra); importing this module does not monkey-patch anything.
"""

from __future__ import annotations

import collections
import socket as std_socket
from typing import Any

import gevent
from gevent import socket as green_socket
from gevent.lock import Semaphore
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from giftstream_client.errors import ProtocolError, RoomClosed, ServerUnreachable
from giftstream_client.frames import ChatRequest, GiftRequest, Welcome, loads, parse

RECV_BYTES = 256 * 1024
MAX_FRAME_BYTES = 2**22


class GreenRoomConnection:
    """One welcomed WebSocket to a room, for greenlets. One greenlet reads (`recv`); any
    may `send` (writes are serialised). `welcome` is the first frame, decoded."""

    def __init__(self, sock: green_socket.socket, protocol: ClientProtocol, url: str) -> None:
        self._sock = sock
        self._protocol = protocol
        self._url = url.split("?", 1)[0]
        self._ready: collections.deque[Frame] = collections.deque()
        self._write_lock = Semaphore()
        self._eof = False
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
        except (OSError, RoomClosed, ProtocolError, ServerUnreachable):
            self.abort()
            raise
        sock.settimeout(None)
        return self

    def _handshake(self) -> None:
        protocol = self._protocol
        protocol.send_request(protocol.connect())
        self._flush()
        while True:
            data = self._sock.recv(RECV_BYTES)
            if not data:
                protocol.receive_eof()
            else:
                protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Response):
                    if protocol.handshake_exc is not None:
                        status = event.status_code
                        raise ServerUnreachable(self._url, f"HTTP {status} to the upgrade")
                elif isinstance(event, Frame):
                    self._ready.append(event)
            if protocol.state is not State.CONNECTING and protocol.handshake_exc is None:
                return  # open (or already closing: the reader sees the close code)
            if not data or protocol.handshake_exc is not None:
                raise ServerUnreachable(self._url, "the upgrade failed")

    def _read_welcome(self) -> None:
        raw = self.recv()
        self.welcome_json = loads(raw)
        frame = parse(self.welcome_json)
        if not isinstance(frame, Welcome):
            kind = self.welcome_json.get("type")
            raise ProtocolError(f"the first frame is {kind!r}, not a welcome")
        self.welcome = frame

    # --- reading --------------------------------------------------------------------------

    def recv(self) -> bytes:
        """The next text frame's bytes; raises `RoomClosed` (with the server's close code,
        1006 without one) once the connection has ended."""
        protocol = self._protocol
        ready = self._ready
        while True:
            while ready:
                frame = ready.popleft()
                if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
                    return bytes(frame.data)
            if self._eof or protocol.state is State.CLOSED:
                raise self._closed()
            try:
                data = self._sock.recv(RECV_BYTES)
            except OSError:
                data = b""
            if data:
                protocol.receive_data(data)
            else:
                self._eof = True
                protocol.receive_eof()
            ready.extend(e for e in protocol.events_received() if isinstance(e, Frame))
            chunks = protocol.data_to_send()  # pongs, and the reply to a close
            if chunks:
                with self._write_lock:
                    self._write(chunks)

    def _closed(self) -> RoomClosed:
        code = self._protocol.close_code
        if self._protocol.close_rcvd is None or code is None:
            code = 1006
        return RoomClosed(code, self._protocol.close_reason or "")

    @property
    def close_code(self) -> int | None:
        if self._protocol.state is not State.CLOSED and not self._eof:
            return None
        return self._closed().code

    # --- writing --------------------------------------------------------------------------

    def send(self, frame: GiftRequest | ChatRequest | bytes) -> None:
        """Send a frame (raises `RoomClosed` once the connection is closing)."""
        data = frame if isinstance(frame, bytes) else frame.encode()
        with self._write_lock:
            if self._protocol.state is not State.OPEN:
                raise self._closed()
            self._protocol.send_text(data)
            self._write(self._protocol.data_to_send())

    def _flush(self) -> None:
        with self._write_lock:
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

    def start_close(self, code: int = 1000) -> None:
        """Send a close frame: the reader then sees the server's reply and the end (its
        `recv` raises `RoomClosed`). Safe from any greenlet."""
        with self._write_lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(code)
                self._write(self._protocol.data_to_send())

    def close(self, *, timeout_s: float = 2.0) -> None:
        """The closing handshake (a close frame, the server's reply, its TCP close), at
        most `timeout_s`; then the socket is closed whatever happened. Only for a
        connection no other greenlet is reading (else: `start_close`, and let the
        reader finish)."""
        protocol = self._protocol
        try:
            self.start_close()
            with gevent.Timeout(timeout_s, TimeoutError):
                while not self._eof and protocol.state is not State.CLOSED:
                    self.recv()
        except (RoomClosed, TimeoutError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket now (no handshake)."""
        self._eof = True
        try:
            self._sock.close()
        except OSError:
            pass
