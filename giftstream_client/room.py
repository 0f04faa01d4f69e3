"""Room sockets for asyncio, on the `websockets` client.

`RoomConnection` is one socket: opened, welcomed, then frames in and out.

`RoomSession` is a viewer's stay in a room across as many connections as it takes:

    async with RoomSession(api.ws_base, room_id, token=ann.token) as room:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(send_gifts(room))      # await room.gift("rose") …
            async for frame in room:                 # the reader: drives the socket
                ...

- every close but a final one (4401, 4404, or ours) is reopened with `since=<last seq>`,
  after the jittered backoff of `giftstream_client.reconnect`, which starts again at each
  welcome; events already seen are dropped, gaps and duplicates counted (`tracker`);
- `gift()` waits for its answer; a gift whose connection dropped before its answer is
  sent again on the next connection with the same `request_id` (never charged twice),
  and so is one refused as `unavailable` or `rate_limited`, a few times;
- gifts and chat lines are paced under the limits the server's welcome names (DESIGN's
  defaults until a welcome names them).

One task iterates the session (it is the only reader: acks are matched there); any
number of others may call `gift()` and `chat()`.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from giftstream_client.errors import ProtocolError, RoomClosed, RoomRefusal, ServerUnreachable
from giftstream_client.frames import (
    PING,
    Ack,
    ChatRequest,
    ClientFrame,
    ErrorFrame,
    Events,
    GiftRequest,
    Limits,
    SeqTracker,
    ServerFrame,
    Welcome,
    decode,
    loads,
    new_request_id,
    parse,
)
from giftstream_client.pacing import TokenGate
from giftstream_client.reconnect import Backoff, should_reconnect

OPEN_TIMEOUT_S = 15.0
# Answers a gift refused this way may be retried (same request_id) after a pause.
RETRY_CODES = frozenset({"unavailable", "rate_limited"})


def room_url(
    ws_base: str, room_id: str, *, token: str | None = None, since: int | None = None
) -> str:
    """`ws://host/ws/rooms/<id>?token=…&since=…`."""
    query: dict[str, str | int] = {}
    if token is not None:
        query["token"] = token
    if since is not None:
        query["since"] = since
    path = f"{ws_base.rstrip('/')}/ws/rooms/{quote(room_id, safe='')}"
    return path + ("?" + urlencode(query) if query else "")


def close_code_of(exc: ConnectionClosed) -> int:
    """The close code the server sent (1006 when the connection died without one)."""
    return exc.rcvd.code if exc.rcvd is not None else 1006


class RoomConnection:
    """One welcomed WebSocket to a room. `welcome` is its first frame (decoded), and
    `welcome_json` the same as the server sent it; `conn` the `websockets` connection."""

    def __init__(self, conn: ClientConnection, welcome_json: dict[str, Any]) -> None:
        self.conn = conn
        self.welcome_json = welcome_json
        frame = parse(welcome_json)
        if not isinstance(frame, Welcome):
            raise ProtocolError(f"the first frame is {welcome_json.get('type')!r}, not a welcome")
        self.welcome: Welcome = frame

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        **options: Any,
    ) -> RoomConnection:
        """Connect to `url` (see `room_url`) and read the welcome. Raises `RoomClosed` when
        the server closes first (4401 bad token, 4404 no such live room, 1013 …),
        `ServerUnreachable` when there is no WebSocket there, `ProtocolError` when the
        first frame is not a welcome. `options` go to `websockets.connect`."""
        try:
            conn = await connect(url, open_timeout=open_timeout_s, **options)
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ServerUnreachable(_public(url), f"HTTP {status} to the upgrade") from exc
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise ServerUnreachable(_public(url), _describe(exc)) from exc
        try:
            async with asyncio.timeout(open_timeout_s):
                raw = await conn.recv()
            return cls(conn, loads(raw))
        except ConnectionClosed as exc:
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            raise RoomClosed(close_code_of(exc), reason) from None
        except TimeoutError:
            await conn.close()
            raise ServerUnreachable(_public(url), "no welcome in time") from None
        except BaseException:
            await conn.close()
            raise

    async def send(self, frame: ClientFrame | bytes | str) -> None:
        """Send a frame: a request record, or text as is (bytes are sent as text)."""
        if isinstance(frame, GiftRequest | ChatRequest):
            data: bytes | str = frame.encode()
        else:
            data = frame
        if isinstance(data, bytes):
            await self.conn.send(data, text=True)
        else:
            await self.conn.send(data)

    async def recv(self) -> bytes:
        """The next frame's bytes (`ConnectionClosed` when the connection ends)."""
        return await self.conn.recv(decode=False)

    async def close(self) -> None:
        await self.conn.close()

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code


def _public(url: str) -> str:
    """The URL without its query (the token stays out of messages and logs)."""
    return url.split("?", 1)[0]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class GiftAck:
    """A gift acked: the balance after it, how long the last send took to be answered,
    and how many times it was sent (more than 1: resent after a drop or a retry)."""

    request_id: str
    coins: int
    latency_s: float
    sends: int


class _Pending:
    __slots__ = ("request", "answer", "sent_at", "sent_on", "sends")

    def __init__(self, request: GiftRequest, answer: asyncio.Future[Ack | ErrorFrame]) -> None:
        self.request = request
        self.answer = answer
        self.sent_at = 0.0
        self.sent_on = -1
        self.sends = 0


class RoomSession:
    """A viewer's stay in one room; see the module's docstring. `options` go to
    `websockets.connect` for every connection."""

    def __init__(
        self,
        ws_base: str,
        room_id: str,
        *,
        token: str | None = None,
        since: int | None = None,
        backoff: Backoff | None = None,
        answer_timeout_s: float = 15.0,
        gift_attempts: int = 5,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        rng: random.Random | None = None,
        **options: Any,
    ) -> None:
        self.ws_base = ws_base
        self.room_id = room_id
        self.token = token
        self.tracker = SeqTracker(since)
        self.backoff = backoff or Backoff(rng=rng)
        self.answer_timeout_s = answer_timeout_s
        self.gift_attempts = max(1, gift_attempts)
        self.open_timeout_s = open_timeout_s
        self.options = {"max_size": 2**22, **options}
        self.limits = Limits()
        self.welcome: Welcome | None = None
        self.connection: RoomConnection | None = None
        self.connections = 0
        self.reconnects = 0
        self.closes: collections.Counter[int] = collections.Counter()
        self.connect_failures: collections.Counter[str] = collections.Counter()
        self.ended = False
        self.final_code: int | None = None
        self._leaving = False
        self._connected = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._gift_gate = TokenGate.for_gifts(self.limits)
        self._chat_gate = TokenGate.for_chat(self.limits)
        self._done = False
        self._attempted = False

    async def __aenter__(self) -> RoomSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the reader ----------------------------------------------------------------------

    def __aiter__(self) -> RoomSession:
        return self

    async def __anext__(self) -> ServerFrame:
        """The next frame: a `Welcome` at every (re)connection, `Events` holding only the
        events not seen before, and every other frame as it came. Ends when the session
        is closed, the room has ended, or the server closed it for good (then
        `final_code` says how); raises `RoomClosed` when reconnecting gave up."""
        while True:
            if self._done:
                raise StopAsyncIteration
            connection = self.connection
            if connection is None:
                if self._leaving or self.ended:
                    self._done = True
                    raise StopAsyncIteration
                welcome = await self._reconnect()
                if welcome is not None:
                    return welcome
                continue
            try:
                data = await connection.recv()
            except ConnectionClosed as exc:
                self._lost(connection, close_code_of(exc))
                continue
            frame = decode(data)
            if isinstance(frame, Events):
                fresh = tuple(e for e in frame.events if self.tracker.accept(e.seq))
                if any(e.kind == "room_ended" for e in fresh):
                    self.ended = True
                if not fresh:
                    continue
                return frame if len(fresh) == len(frame.events) else Events(fresh)
            if isinstance(frame, Ack | ErrorFrame):
                self._answered(frame)
            return frame

    async def _reconnect(self) -> Welcome | None:
        """Open the next connection (after the backoff's pause if this is not the first);
        its welcome, or None after a failure (then the loop decides again)."""
        if self._attempted:
            pause = self.backoff.failed()
            if pause is None:
                self._done = True
                raise RoomClosed(self.final_code or 1006, "gave up reconnecting")
            await asyncio.sleep(pause)
            if self._leaving:
                return None
        self._attempted = True
        url = room_url(self.ws_base, self.room_id, token=self.token, since=self.tracker.since)
        try:
            connection = await RoomConnection.open(
                url, open_timeout_s=self.open_timeout_s, **self.options
            )
        except RoomClosed as exc:
            self.closes[exc.code] += 1
            self.final_code = exc.code
            if not should_reconnect(exc.code):
                self._done = True
                self._fail_pending(exc)
                return None
            return None
        except ServerUnreachable as exc:
            self.connect_failures[exc.reason] += 1
            return None
        if self._leaving:
            await connection.close()
            return None
        self.backoff.succeeded()
        self.connection = connection
        if self.connections:
            self.reconnects += 1
        self.connections += 1
        welcome = connection.welcome
        self.welcome = welcome
        self.tracker.welcome(welcome.seq)
        if welcome.limits != self.limits:
            self.limits = welcome.limits
            self._gift_gate = TokenGate.for_gifts(welcome.limits)
            self._chat_gate = TokenGate.for_chat(welcome.limits)
        self._connected.set()
        # Gifts whose answer the last connection took with it: the same frames again.
        for pending in list(self._pending.values()):
            if pending.sent_on != self.connections:
                await self._send_gift(pending)
        return welcome

    def _lost(self, connection: RoomConnection, code: int) -> None:
        if self.connection is connection:
            self.connection = None
            self._connected.clear()
        if self._leaving:
            return
        self.closes[code] += 1
        self.final_code = code
        if not should_reconnect(code) or self.ended:
            self._done = True
            self._fail_pending(RoomClosed(code))

    def _answered(self, frame: Ack | ErrorFrame) -> None:
        if frame.request_id is None:
            return
        pending = self._pending.get(frame.request_id)
        if pending is not None and not pending.answer.done():
            pending.answer.set_result(frame)

    def _fail_pending(self, exc: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.answer.done():
                pending.answer.set_exception(exc)

    # --- sending ----------------------------------------------------------------------------

    async def gift(self, gift_id: str, count: int = 1, *, request_id: str | None = None) -> GiftAck:
        """Send a gift and wait for its ack. Raises `RoomRefusal` with the server's code
        (`insufficient_coins`, …), `RoomClosed` when the session ended before an answer,
        `TimeoutError` when none came in `answer_timeout_s` (then it may or may not have
        been debited: send it again with the same `request_id` to know, never charged
        twice)."""
        request = GiftRequest(gift_id, count, request_id or new_request_id())
        loop = asyncio.get_running_loop()
        for attempt in range(1, self.gift_attempts + 1):
            if self._done or self._leaving:
                raise RoomClosed(self.final_code or 1000, "the session is over")
            await self._pass(self._gift_gate)
            pending = _Pending(request, loop.create_future())
            self._pending[request.request_id] = pending
            try:
                if self.connection is not None:
                    await self._send_gift(pending)
                async with asyncio.timeout(self.answer_timeout_s):
                    answer = await pending.answer
            finally:
                if self._pending.get(request.request_id) is pending:
                    del self._pending[request.request_id]
            if isinstance(answer, Ack):
                return GiftAck(
                    request.request_id,
                    answer.coins,
                    time.perf_counter() - pending.sent_at,
                    pending.sends,
                )
            if answer.code in RETRY_CODES and attempt < self.gift_attempts:
                await asyncio.sleep(self.backoff.base_s * attempt)
                continue
            raise RoomRefusal(answer.code, answer.message, request.request_id)
        raise AssertionError("unreachable")

    async def _send_gift(self, pending: _Pending) -> None:
        connection = self.connection
        if connection is None:
            return  # sent again at the next welcome
        pending.sent_at = time.perf_counter()
        pending.sent_on = self.connections
        pending.sends += 1
        try:
            await connection.send(pending.request)
        except ConnectionClosed:
            pass  # the reader sees the close; the next welcome sends it again

    async def chat(self, text: str, *, request_id: str | None = None) -> str:
        """Send a chat line (paced); its request_id. A refusal comes back as an
        `ErrorFrame` with that id through the reader; an accepted line as an event."""
        request = ChatRequest(text, request_id or new_request_id())
        await self._pass(self._chat_gate)
        connection = self.connection
        if connection is None:
            raise RoomClosed(self.final_code or 1006, "not connected")
        try:
            await connection.send(request)
        except ConnectionClosed as exc:
            raise RoomClosed(close_code_of(exc)) from None
        return request.request_id

    async def ping(self) -> None:
        if self.connection is not None:
            await self.connection.send(PING)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    @property
    def in_flight(self) -> int:
        """Gifts sent and not answered yet."""
        return len(self._pending)

    @staticmethod
    async def _pass(gate: TokenGate) -> None:
        while (delay := gate.delay()) > 0:
            await asyncio.sleep(delay)

    # --- leaving ------------------------------------------------------------------------

    async def close(self, *, drain_s: float = 0.0) -> None:
        """Leave: wait up to `drain_s` for the gifts in flight to be answered, then close
        the socket (the reader then ends)."""
        if drain_s > 0 and self._pending:
            waiting = [p.answer for p in self._pending.values()]
            await asyncio.wait(waiting, timeout=drain_s)
        self._leaving = True
        connection = self.connection
        if connection is not None:
            await connection.close()
        self._fail_pending(RoomClosed(1000, "left before the answer"))
