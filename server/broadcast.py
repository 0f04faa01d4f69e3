"""Writing a frame to many sockets in slices, so that no write of a big room holds the
event loop for more than `slice_s`.

A `Broadcast` is one frame's way to many viewers (a room's flush, a room_state). The
`Broadcaster` runs broadcasts in the order they were given: each turn of the loop it
writes until `slice_s` has passed, then lets the loop run everything else that is ready
(reads, acks, Redis replies) before the next slice. Broadcasts of one room go out in the
order given, so each viewer sees a room's frames in order; a viewer that leaves meanwhile
is skipped by the broadcast itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

log = logging.getLogger(__name__)


class Broadcast:
    """One broadcast's progress: `step` writes to the next viewers until `deadline`
    (a `time.perf_counter()` value) and says whether it is done; `finish` runs once,
    after its last step."""

    __slots__ = ("cost_s",)

    def __init__(self) -> None:
        # CPU seconds its steps took: what the hub paces rooms by.
        self.cost_s = 0.0

    def step(self, deadline: float) -> bool:
        raise NotImplementedError

    def finish(self) -> None:
        pass


class Broadcaster:
    """Runs broadcasts, oldest first, in slices of at most about `slice_s` each (at least
    one write per slice: 0 writes one socket per turn of the loop)."""

    def __init__(self, *, slice_s: float) -> None:
        self._slice_s = slice_s
        self._queue: deque[Broadcast] = deque()
        self._scheduled: asyncio.Handle | None = None
        # The longest slice so far, for the benchmark's record of loop stalls.
        self.longest_slice_s = 0.0

    def submit(self, broadcast: Broadcast) -> None:
        self._queue.append(broadcast)
        if self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self._turn)

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def close(self) -> None:
        """Drop every broadcast not yet written (at shutdown)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._queue.clear()

    def _turn(self) -> None:
        self._scheduled = None
        started = time.perf_counter()
        deadline = started + self._slice_s
        queue = self._queue
        try:
            while queue:
                broadcast = queue[0]
                # Its cost in CPU time (the kernel's part of each write included), not wall
                # time: a process that is made to wait for the CPU has not spent it.
                t0 = time.thread_time()
                try:
                    done = broadcast.step(deadline)
                except Exception:
                    # A bug in one broadcast must not stop every other one behind it.
                    log.exception("broadcast failed; its remaining viewers are skipped")
                    done = True
                broadcast.cost_s += time.thread_time() - t0
                if not done:
                    break
                queue.popleft()
                try:
                    broadcast.finish()
                except Exception:
                    log.exception("broadcast failed to finish")
                if time.perf_counter() >= deadline:
                    break
        finally:
            took = time.perf_counter() - started
            if took > self.longest_slice_s:
                self.longest_slice_s = took
            if queue and self._scheduled is None:
                # Behind whatever else is ready: reads, acks and replies go first.
                self._scheduled = asyncio.get_running_loop().call_soon(self._turn)
