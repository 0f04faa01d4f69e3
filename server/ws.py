"""The WebSocket endpoint `/ws/rooms/{room_id}?token=…&since=<seq>` (DESIGN section 4).

A connection is accepted, then: authenticated (no token: watch only), the room checked,
joined in the hub, welcomed (with the missed events when `since` is given), and served
by a reader task that decodes and answers the client's frames one at a time. Frames to
the client (the room's, and answers) are written straight into the socket when the
server allows it (`server.direct`), else queued for a writer task of the socket's own.
Refusals become error frames or close codes here, and only here (`frame_code`,
`close_code`). Nothing a client sends can end the connection except an oversized frame
(1009); nothing it sends can crash the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

from redis.exceptions import RedisError
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from server import economy, metrics
from server.auth import user_from_token
from server.direct import SCOPE_KEY, DirectSocket
from server.errors import (
    Forbidden,
    NotFound,
    RateLimited,
    Refusal,
    RoomNotLive,
    Unauthorized,
)
from server.hub import RoomHub
from server.protocol import (
    PONG,
    ChatFrame,
    FrameRejected,
    GiftFrame,
    Outgoing,
    PingFrame,
    ack_frame,
    decode_client_frame,
    error_frame,
    event_seq,
    events_frame,
    welcome_frame,
)
from server.rate_limit import TokenBucket
from server.services import Services
from server.store.cancellation import reraise_lost_cancellation
from server.store.gifts import GiftOrder
from server.store.wallets import Profile
from server.viewers import DirectViewer, QueuedViewer, Viewer

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
HISTORY_FRAME_EVENTS = 200
_SINCE = re.compile(r"^\d{1,18}$")
_PEER_GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)

# The error codes a client can see in an error frame (DESIGN section 4).
FRAME_CODES = frozenset(
    {
        "bad_request",
        "unauthorized",
        "unknown_gift",
        "insufficient_coins",
        "spending_limit_reached",
        "rate_limited",
        "room_not_live",
        "forbidden",
        "unavailable",
        "internal",
    }
)
_FORBIDDEN_CODES = frozenset({"suspended", "underage", "region_unavailable", "not_verified"})
_CLOSE_CODES = {
    "unauthorized": CLOSE_UNAUTHORIZED,
    "not_found": CLOSE_NOT_FOUND,
    "room_not_live": CLOSE_NOT_FOUND,
    "unavailable": CLOSE_TRY_AGAIN_LATER,
}


def frame_code(refusal: Refusal) -> str:
    """The error frame's code for a refusal: one of `FRAME_CODES`."""
    if refusal.code in FRAME_CODES:
        return refusal.code
    if refusal.code in _FORBIDDEN_CODES:
        return "forbidden"
    return "bad_request"


def close_code(refusal: Refusal) -> int:
    """The close code for a refusal met before the welcome (auth, room, Redis)."""
    return _CLOSE_CODES.get(refusal.code, 1008)


def _log_failure(task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    # A peer that went away ends the writer: that is no failure.
    if exc is not None and not isinstance(exc, _PEER_GONE):
        log.error("websocket %s failed", task.get_name(), exc_info=exc)


def _is_store_error(exc: BaseException) -> bool:
    # TimeoutError and ConnectionError of the socket layer are OSErrors.
    return isinstance(exc, RedisError | OSError)


class RoomSession:
    """One accepted WebSocket in one room."""

    def __init__(self, websocket: WebSocket, svc: Services, hub: RoomHub) -> None:
        self.ws = websocket
        self.svc = svc
        self.hub = hub
        self.room_id: str = websocket.path_params["room_id"]
        self.user: Profile | None = None
        self.creator_id = ""
        s = svc.settings
        now = time.monotonic()
        self.gift_bucket = TokenBucket(rate_per_s=s.gift_rate_per_s, burst=s.gift_burst, now=now)
        self.chat_bucket = TokenBucket(rate_per_s=s.chat_rate_per_s, burst=s.chat_burst, now=now)

    async def serve(self) -> None:
        viewer: Viewer | None = None
        try:
            try:
                await self._admit()
                direct: DirectSocket | None = self.ws.scope.get(SCOPE_KEY)
                writer = "queued" if direct is None else "direct"
                metrics.SOCKETS_ACCEPTED.labels(writer=writer).inc()
                viewer = self.hub.viewer(self.user.user_id if self.user else None, direct)
                await self.hub.join(self.room_id, viewer)
                started = await self._welcome(viewer)
            except Refusal as exc:
                await self._close(close_code(exc), exc.message)
                return
            except Exception as exc:
                if not _is_store_error(exc):
                    raise
                metrics.REDIS_ERRORS.inc()
                log.warning("websocket refused, redis unavailable: %s", exc)
                await self._close(CLOSE_TRY_AGAIN_LATER, "the store is unavailable; try again")
                return
            if not started:
                await self._close(CLOSE_TOO_SLOW, "too slow: reconnect with since=<seq>")
                return
            await self._converse(viewer)
        finally:
            if viewer is not None:
                self.hub.leave(self.room_id, viewer)

    async def _close(self, code: int, reason: str) -> None:
        # The peer may be gone already: then there is no one to tell.
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:120])

    # --- admission and welcome ----------------------------------------------------------

    def _token(self) -> str | None:
        token = self.ws.query_params.get("token")
        if token:
            return token
        header = self.ws.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return None

    async def _admit(self) -> None:
        token = self._token()
        if token is not None:
            user_id = user_from_token(token, secret=self.svc.settings.token_secret)
            self.user = await self.svc.wallets.profile(user_id)
        raw = await self.svc.rooms.room(self.room_id)
        if raw["status"] != "live":
            raise NotFound("this live has ended")
        self.creator_id = raw["creator_id"]

    def _since(self) -> int | None:
        raw = self.ws.query_params.get("since")
        if raw is None or not _SINCE.fullmatch(raw):
            return None
        return int(raw)

    async def _welcome(self, viewer: Viewer) -> bool:
        """Queue the welcome (and the missed events for `since`); the hub then queues
        what arrived meanwhile. Called once the hub has joined the room, so nothing
        published after the room is read here can be missed."""
        rooms = self.svc.rooms
        await rooms.set_presence(
            self.room_id, self.svc.process_id, self.hub.local_viewers(self.room_id)
        )
        raw = await rooms.room(self.room_id)
        if raw["status"] != "live":
            raise NotFound("this live has ended")
        seq = int(raw["seq"])
        top = await rooms.top(self.room_id)
        viewers = (await rooms.viewers([self.room_id]))[self.room_id]
        you: dict[str, Any] | None = None
        if self.user is not None:
            wallet = await self.svc.wallets.wallet(self.user.user_id)
            you = {"user_id": self.user.user_id, "coins": wallet["coins"]}
        since = self._since()
        history: list[bytes] = []
        recovered = False
        if since is not None and since <= seq:
            history, recovered = await rooms.events_since(self.room_id, since)
        floor = max(seq, event_seq(history[-1])) if history else seq
        welcome = welcome_frame(
            room=await rooms.describe(self.room_id, raw),
            seq=seq,
            viewers=viewers,
            top=top,
            you=you,
            recovered=recovered,
        )
        frames = [Outgoing(welcome)]
        for start in range(0, len(history), HISTORY_FRAME_EVENTS):
            frames.append(Outgoing(events_frame(history[start : start + HISTORY_FRAME_EVENTS])))
        return self.hub.start(self.room_id, viewer, frames, floor=floor, state=(viewers, top))

    # --- the conversation -----------------------------------------------------------

    async def _converse(self, viewer: Viewer) -> None:
        """Read and answer in this task until the peer leaves, sends a frame too big, or
        falls too far behind: then the hub's overflow cancels the read here (the cheapest
        way to watch for it: no task of its own)."""
        task = asyncio.current_task()
        assert task is not None
        writer: asyncio.Task[None] | None = None
        if isinstance(viewer, QueuedViewer):
            writer = asyncio.create_task(self._write(viewer), name="ws-writer")
            writer.add_done_callback(_log_failure)
        viewer.on_overflow = task.cancel
        code: int | None = None
        try:
            code = await self._read(viewer)
        except asyncio.CancelledError:
            # Our own cancel, from the overflow, and no one else's (a shutdown's)?
            if not viewer.overflowed or task.uncancel() > 0:
                raise
        except _PEER_GONE:
            return  # a peer that went away is no failure
        finally:
            viewer.on_overflow = None
            if writer is not None:
                writer.cancel()
        if viewer.overflowed:
            # The hub no longer offers frames to this socket. Its close frame waits behind
            # what the peer has not read yet; a peer that reads nothing is dropped.
            timeout = self.svc.settings.slow_close_timeout_s
            if isinstance(viewer, DirectViewer):
                viewer.socket.abort_after(timeout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._close(CLOSE_TOO_SLOW, "too slow: reconnect with since=<seq>")
        elif code is not None:
            await self._close(code, "frame too big")

    async def _write(self, viewer: QueuedViewer) -> None:
        while True:
            frame = await viewer.next_frame()
            await self.ws.send_text(frame.data.decode())

    def _reply(self, viewer: Viewer, frame: bytes) -> None:
        # The same way as the room's events, in order with them; too much unsent is a slow
        # reader.
        viewer.offer(Outgoing(frame))

    async def _read(self, viewer: Viewer) -> int | None:
        """Serve the client's frames until it leaves (None) or must be closed (a code)."""
        limit = self.svc.settings.max_frame_bytes
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > limit:
                    return CLOSE_TOO_BIG
                self._reply(
                    viewer, error_frame("bad_request", "frames must be text frames of JSON")
                )
                continue
            # uvicorn enforces the limit (ws_max_size); this holds under any server.
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                return CLOSE_TOO_BIG
            await self._handle(viewer, text)
            reraise_lost_cancellation()

    async def _handle(self, viewer: Viewer, text: str) -> None:
        request_id: str | None = None
        gift = False
        try:
            frame = decode_client_frame(text, self.svc.catalog)
            if isinstance(frame, PingFrame):
                self._reply(viewer, PONG)
                return
            request_id = frame.request_id
            if isinstance(frame, GiftFrame):
                gift = True
                await self._gift(viewer, frame)
            else:
                await self._chat(frame)
        except FrameRejected as exc:
            refusal = exc.refusal
            self._reply(viewer, error_frame(frame_code(refusal), refusal.message, exc.request_id))
        except Refusal as exc:
            code = frame_code(exc)
            if gift:
                metrics.GIFTS.labels(result=code).inc()
            self._reply(viewer, error_frame(code, exc.message, request_id))
        except Exception as exc:
            if _is_store_error(exc):
                metrics.REDIS_ERRORS.inc()
                log.warning("frame not served, redis unavailable: %s", exc)
                code, message = "unavailable", "the store is unavailable; try again"
            else:
                log.exception("frame not served: internal error")
                code, message = "internal", "internal error"
            if gift:
                metrics.GIFTS.labels(result=code).inc()
            self._reply(viewer, error_frame(code, message, request_id))

    def _need_user(self, what: str) -> Profile:
        if self.user is None:
            raise Unauthorized(f"watching only: sign in (token=…) to {what}")
        return self.user

    async def _gift(self, viewer: Viewer, frame: GiftFrame) -> None:
        started = time.perf_counter()
        user = self._need_user("send gifts")
        if not self.gift_bucket.take(time.monotonic()):
            raise RateLimited("too many gifts: slow down")
        economy.check_gift_allowed(sender_id=user.user_id, creator_id=self.creator_id)
        if not self.hub.is_live(self.room_id):
            raise RoomNotLive("this live has ended")
        gifts = self.svc.gifts
        receipt = await gifts.debit(
            GiftOrder(
                sender_id=user.user_id,
                sender_name=user.name,
                room_id=self.room_id,
                creator_id=self.creator_id,
                gift=frame.gift,
                count=frame.count,
                request_id=frame.request_id,
            )
        )
        # Acked once debited (DESIGN section 3); steps 2-4 follow before the next frame.
        self._reply(viewer, ack_frame(frame.request_id, receipt.coins))
        metrics.GIFT_ACK_SECONDS.observe(time.perf_counter() - started)
        metrics.GIFTS.labels(result="acked").inc()
        if not receipt.replayed:
            coins = economy.gift_total(frame.gift, frame.count)
            metrics.COINS_SPENT.inc(coins)
            metrics.DIAMONDS_CREDITED.inc(
                economy.diamonds_for(coins, self.svc.settings.diamonds_per_coin)
            )
        try:
            await gifts.complete(receipt)
        except Exception as exc:  # noqa: BLE001 - acked already: the sweeper finishes it
            metrics.REDIS_ERRORS.inc()
            log.warning("gift %s: steps 2-4 failed (%s); the sweeper finishes it", receipt, exc)

    async def _chat(self, frame: ChatFrame) -> None:
        user = self._need_user("chat")
        if user.status != "active":
            raise Forbidden("this account is suspended")
        if not self.chat_bucket.take(time.monotonic()):
            raise RateLimited("too many chat lines: slow down")
        if not self.hub.is_live(self.room_id):
            raise RoomNotLive("this live has ended")
        await self.svc.rooms.post_chat(
            self.room_id,
            user_id=user.user_id,
            name=user.name,
            request_id=frame.request_id,
            text=frame.text,
        )


async def room_socket(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    hub: RoomHub = websocket.app.state.hub
    await websocket.accept()
    metrics.CONNECTIONS_OPEN.inc()
    try:
        await RoomSession(websocket, svc, hub).serve()
    except Exception:
        log.exception("websocket session failed")
        with contextlib.suppress(Exception):
            await websocket.close(1011, "internal error")
    finally:
        metrics.CONNECTIONS_OPEN.dec()


routes = [WebSocketRoute("/ws/rooms/{room_id}", room_socket)]
