"""Per-socket writers: a viewer is one local socket in one room, as the hub sees it.

`offer` hands a viewer a frame without waiting. Each socket's unsent bytes are bounded
(`limit_bytes`): a frame offered past that is refused and the viewer is to be closed as
too slow (1008). The hub asks a viewer to close (`close(code, reason)`: too slow, its
room's feed lost, the server draining); `closing` then says why, `on_close` tells the
socket's session (once), and nothing more is offered to it.

Two kinds: `DirectViewer` writes straight into the socket's transport (`server.direct`),
whose write buffer is its bounded queue; `QueuedViewer` queues frames, bounded by their
bytes, for a writer task of the socket's own, under servers that give no direct access.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from server.direct import Bundle, DirectSocket
from server.protocol import Outgoing
from server.sequencing import ViewerOrder

# What a viewer is offered: one frame, or frames written together.
Frames = Outgoing | Bundle


def size_of(frames: Frames) -> int:
    """The payload bytes of `frames` (what a socket's bound counts)."""
    if isinstance(frames, Outgoing):
        return len(frames.data)
    return sum(len(frame.data) for frame in frames.frames)


CLOSE_TOO_SLOW = 1008
TOO_SLOW = "too slow: reconnect with since=<seq>"


class Viewer(ViewerOrder):
    # Slots and a callback rather than an asyncio.Event: a viewer is kept per socket, and
    # every byte of it counts at thousands of sockets a process.
    __slots__ = ("user_id", "closing", "on_close", "_limit")

    def __init__(self, *, user_id: str | None, limit_bytes: int) -> None:
        super().__init__()
        self.user_id = user_id
        # Why the hub wants this socket closed: (code, reason); None while it is served.
        self.closing: tuple[int, str] | None = None
        self.on_close: Callable[[], object] | None = None
        self._limit = limit_bytes

    @property
    def overflowed(self) -> bool:
        """Closed, or to be closed, as too slow (1008)."""
        return self.closing is not None and self.closing[0] == CLOSE_TOO_SLOW

    def offer(self, frame: Frames) -> bool:
        """Pass `frame` on without waiting; False if it did not fit (the viewer is then
        to be closed as too slow) or the viewer is to be closed already."""
        if self.closing is not None:
            return False
        if self._put(frame):
            return True
        self.overflow()
        return False

    def overflow(self) -> None:
        self.close(CLOSE_TOO_SLOW, TOO_SLOW)

    def close(self, code: int, reason: str) -> None:
        """Ask for the socket to be closed with `code` (the first ask wins); nothing more
        is offered to it. `on_close` tells its session."""
        if self.closing is None:
            self.closing = (code, reason)
            if self.on_close is not None:
                self.on_close()

    def _put(self, frame: Frames) -> bool:
        raise NotImplementedError


class DirectViewer(Viewer):
    """Frames go straight into the socket's transport; its write buffer is the bounded
    queue."""

    __slots__ = ("socket",)

    def __init__(self, socket: DirectSocket, *, user_id: str | None, limit_bytes: int) -> None:
        super().__init__(user_id=user_id, limit_bytes=limit_bytes)
        self.socket = socket

    def _put(self, frame: Frames) -> bool:
        return self.socket.write(frame, limit_bytes=self._limit)


class QueuedViewer(Viewer):
    """Frames wait in a queue, bounded by their bytes, for the socket's own writer task
    (`next_frame`)."""

    __slots__ = ("queue", "queued_bytes")

    def __init__(self, *, user_id: str | None, limit_bytes: int) -> None:
        super().__init__(user_id=user_id, limit_bytes=limit_bytes)
        # Unbounded in count, bounded in bytes by `_put`.
        self.queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.queued_bytes = 0

    def _put(self, frame: Frames) -> bool:
        if self.queued_bytes >= self._limit:
            return False
        for one in (frame,) if isinstance(frame, Outgoing) else frame.frames:
            self.queue.put_nowait(one)
            self.queued_bytes += len(one.data)
        return True

    async def next_frame(self) -> Outgoing:
        frame = await self.queue.get()
        self.queued_bytes -= len(frame.data)
        return frame
