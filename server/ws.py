"""The WebSocket endpoint `/ws/rooms/{room_id}?token=…&since=<seq>` (DESIGN section 4).

A connection is accepted, then: authenticated (no token: watch only), the room checked,
joined in the hub, welcomed (with the missed events when `since` is given), and served
by a reader task that decodes and answers the client's frames one at a time. Frames to
the client (the room's, and answers) are written straight into the socket when the
server allows it (`server.direct`), else queued for a writer task of the socket's own.
Gift and chat frames are served by `server.room_commands`, the one path they take.
Refusals become error frames (their `wire` code) or, before the welcome, close codes
(their `close` code) here, and only here. Nothing a client sends can end the connection
except an oversized frame (1009); nothing it sends can crash the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from server import metrics
from server.auth import user_from_token
from server.direct import SCOPE_KEY, DirectSocket
from server.errors import Forbidden, NotFound, Refusal, Unavailable
from server.hub import RoomHub
from server.protocol import (
    PONG,
    ChatFrame,
    FrameRejected,
    Outgoing,
    PingFrame,
    ack_frame,
    decode_client_frame,
    error_frame,
    event_seq,
    events_frame,
    welcome_frame,
)
from server.room_commands import LiveRoom, RoomCommands
from server.services import Services
from server.settings import Settings
from server.store.cancellation import reraise_lost_cancellation
from server.store.connection import is_store_error
from server.store.wallets import Profile
from server.viewers import DirectViewer, QueuedViewer, Viewer

log = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
HISTORY_FRAME_EVENTS = 200
_SINCE = re.compile(r"^[0-9]{1,18}$")
_PEER_GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)


def welcome_limits(settings: Settings) -> dict[str, int | float]:
    """The rate and size limits a client must keep to, as the welcome tells them (so
    clients read them from the server rather than copying its defaults)."""

    def number(value: float) -> int | float:
        return int(value) if float(value).is_integer() else value

    return {
        "gift_per_s": number(settings.gift_rate_per_s),
        "gift_burst": settings.gift_burst,
        "chat_per_s": number(settings.chat_rate_per_s),
        "chat_burst": settings.chat_burst,
        "max_frame_bytes": settings.max_frame_bytes,
    }


def _log_failure(task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    # A peer that went away ends the writer: that is no failure.
    if exc is not None and not isinstance(exc, _PEER_GONE):
        log.error("websocket %s failed", task.get_name(), exc_info=exc)


class RoomSession:
    """One accepted WebSocket in one room."""

    # One per socket for the connection's life: slots, not a dict.
    __slots__ = ("ws", "svc", "hub", "commands", "room_id", "user", "room", "socket_member")

    def __init__(
        self, websocket: WebSocket, svc: Services, hub: RoomHub, commands: RoomCommands
    ) -> None:
        self.ws = websocket
        self.svc = svc
        self.hub = hub
        self.commands = commands
        self.room_id: str = websocket.path_params["room_id"]
        self.user: Profile | None = None
        self.room = LiveRoom(self.room_id, "")
        # This socket's entry in its user's count of open sockets (signed-in users only).
        self.socket_member: str | None = None

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
                await self._close(exc.close, exc.message)
                return
            except Exception as exc:
                if not is_store_error(exc):
                    raise
                metrics.REDIS_ERRORS.inc()
                log.warning("websocket refused, redis unavailable: %s", exc)
                refusal = Unavailable("the store is unavailable; try again")
                await self._close(refusal.close, refusal.message)
                return
            if not started:
                # Asked to close before its welcome was out (too slow, or the server
                # draining).
                if viewer.closing is None:
                    viewer.overflow()
                await self._close_for_hub(viewer)
                return
            await self._converse(viewer)
        finally:
            if viewer is not None:
                self.hub.leave(self.room_id, viewer)
            if self.socket_member is not None:
                with contextlib.suppress(Exception):  # if Redis is away, it expires
                    await self.svc.sockets.close(self.socket_member)

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

    def _check_origin(self) -> None:
        """A browser's handshake from an origin not allowed is refused (4403): another
        site's page must not act with the user's identity. No Origin (a native app, a
        bot) is fine."""
        origin = self.ws.headers.get("origin")
        if origin is None:
            return
        allowed = self.svc.settings.allowed_origins
        origin = origin.rstrip("/")
        if "*" in allowed or origin in allowed:
            return
        host = self.ws.headers.get("host", "")
        if not allowed and origin in (f"http://{host}", f"https://{host}"):
            return
        raise Forbidden(f"origin {origin[:100]} may not open room sockets here")

    async def _admit(self) -> None:
        self._check_origin()
        token = self._token()
        if token is not None:
            user_id = user_from_token(token, secret=self.svc.settings.token_secret)
            self.user = await self.svc.wallets.profile(user_id)
        raw = await self.svc.rooms.room(self.room_id)
        if raw["status"] != "live":
            raise NotFound("this live has ended")
        self.room = LiveRoom(self.room_id, raw["creator_id"])
        if self.user is not None:
            self.socket_member = await self.svc.sockets.open(self.user.user_id)

    def _since(self) -> int | None:
        raw = self.ws.query_params.get("since")
        if raw is None or not _SINCE.fullmatch(raw):
            return None
        return int(raw)

    async def _welcome(self, viewer: Viewer) -> bool:
        """Queue the welcome (and the missed events for `since`); the hub then queues
        what arrived meanwhile. Called once the hub has joined the room, so nothing
        published after the room is read here can be missed. One round trip to the store
        (`RoomStore.welcome`)."""
        since = self._since()
        snapshot = await self.svc.rooms.welcome(
            self.room_id,
            process_id=self.svc.process_id,
            local_viewers=self.hub.local_viewers(self.room_id),
            since=since,
            user_id=self.user.user_id if self.user is not None else None,
        )
        raw = snapshot.room
        if raw["status"] != "live":
            raise NotFound("this live has ended")
        seq = int(raw["seq"])
        history: list[bytes] = []
        recovered = False
        if since is not None and since <= seq:
            history, recovered = snapshot.history, snapshot.complete
        you: dict[str, Any] | None = None
        if self.user is not None:
            you = {"user_id": self.user.user_id, "coins": snapshot.coins}
        floor = max(seq, event_seq(history[-1])) if history else seq
        welcome = welcome_frame(
            room=await self.svc.rooms.describe(self.room_id, raw),
            seq=seq,
            viewers=snapshot.viewers,
            top=snapshot.top,
            you=you,
            recovered=recovered,
            limits=welcome_limits(self.svc.settings),
        )
        frames = [Outgoing(welcome)]
        for start in range(0, len(history), HISTORY_FRAME_EVENTS):
            frames.append(Outgoing(events_frame(history[start : start + HISTORY_FRAME_EVENTS])))
        self._forget_handshake()
        state = (snapshot.viewers, snapshot.top)
        return self.hub.start(self.room_id, viewer, frames, floor=floor, state=state)

    def _forget_handshake(self) -> None:
        """Past the welcome, the handshake's headers and query (the token among them) are
        read no more: not kept for the connection's life, at thousands of sockets."""
        scope = self.ws.scope
        scope["headers"] = []
        scope["query_string"] = b""
        for cached in ("_headers", "_query_params", "_url"):
            self.ws.__dict__.pop(cached, None)

    # --- the conversation -----------------------------------------------------------

    async def _converse(self, viewer: Viewer) -> None:
        """Read and answer in this task until the peer leaves, sends a frame too big, or
        the hub asks for the socket to close (too slow, its feed lost, the server
        draining): then `viewer.close` cancels the read here (the cheapest way to watch
        for it: no task of its own)."""
        task = asyncio.current_task()
        assert task is not None
        writer: asyncio.Task[None] | None = None
        if isinstance(viewer, QueuedViewer):
            writer = asyncio.create_task(self._write(viewer), name="ws-writer")
            writer.add_done_callback(_log_failure)
        viewer.on_close = task.cancel
        code: int | None = None
        try:
            if viewer.closing is None:
                code = await self._read(viewer)
        except asyncio.CancelledError:
            # Our own cancel, from the hub's ask, and no one else's (a shutdown's)?
            if viewer.closing is None or task.uncancel() > 0:
                raise
        except _PEER_GONE:
            return  # a peer that went away is no failure
        finally:
            viewer.on_close = None
            if writer is not None:
                writer.cancel()
        if viewer.closing is not None:
            await self._close_for_hub(viewer)
        elif code is not None:
            await self._close(code, "frame too big")

    async def _close_for_hub(self, viewer: Viewer) -> None:
        """Close as the hub asked. The hub no longer offers frames to this socket; its
        close frame waits behind what the peer has not read yet, and a peer that reads
        nothing meanwhile is reset."""
        assert viewer.closing is not None
        code, reason = viewer.closing
        timeout = self.svc.settings.slow_close_timeout_s
        if isinstance(viewer, DirectViewer):
            viewer.socket.abort_after(timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._close(code, reason)

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
        try:
            frame = decode_client_frame(text, self.svc.catalog)
            if isinstance(frame, PingFrame):
                self._reply(viewer, PONG)
                return
            request_id = frame.request_id
            if isinstance(frame, ChatFrame):
                await self.commands.chat(self.user, self.room, frame)
            else:
                coins = await self.commands.gift(self.user, self.room, frame)
                self._reply(viewer, ack_frame(frame.request_id, coins))
        except FrameRejected as exc:
            refusal = exc.refusal
            self._reply(viewer, error_frame(refusal.wire, refusal.message, exc.request_id))
        except Refusal as exc:
            self._reply(viewer, error_frame(exc.wire, exc.message, request_id))
        except Exception:
            log.exception("frame not served: internal error")
            self._reply(viewer, error_frame("internal", "internal error", request_id))


async def room_socket(websocket: WebSocket) -> None:
    state = websocket.app.state
    await websocket.accept()
    metrics.CONNECTIONS_OPEN.inc()
    try:
        await RoomSession(websocket, state.services, state.hub, state.commands).serve()
    except Exception:
        log.exception("websocket session failed")
        with contextlib.suppress(Exception):
            await websocket.close(1011, "internal error")
    finally:
        metrics.CONNECTIONS_OPEN.dec()


routes = [WebSocketRoute("/ws/rooms/{room_id}", room_socket)]
