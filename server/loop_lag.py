"""How long the event loop keeps everyone waiting: a callback due every `interval_s` is
timed against when it was due. Its lateness is what any task ready at that moment waited
(a read, an ack, a Redis reply), so its worst over a storm is the loop's worst stall.

Exported as `giftstream_loop_lag_seconds` (a histogram of every sample) and
`giftstream_loop_lag_max_seconds` (the worst over the last `window_s` seconds), which the
benchmark reads during its fan-out storm.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from server import metrics


class LoopLag:
    def __init__(self, *, interval_s: float = 0.01, window_s: float = 5.0) -> None:
        self._interval_s = interval_s
        self._window_s = window_s
        # (whole second, worst lag in it), the last `window_s` seconds of them.
        self._seconds: deque[tuple[int, float]] = deque()
        self.worst_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            now = loop.time()
            self.record(now, max(0.0, now - due))

    def record(self, now: float, lag: float) -> None:
        metrics.LOOP_LAG_SECONDS.observe(lag)
        if lag > self.worst_s:
            self.worst_s = lag
        second = math.floor(now)
        seconds = self._seconds
        if seconds and seconds[-1][0] == second:
            if lag > seconds[-1][1]:
                seconds[-1] = (second, lag)
        else:
            seconds.append((second, lag))
        while seconds and seconds[0][0] <= second - self._window_s:
            seconds.popleft()
        metrics.LOOP_LAG_MAX_SECONDS.set(self.recent_worst_s)

    @property
    def recent_worst_s(self) -> float:
        """The worst lag over the last `window_s` seconds (of those recorded)."""
        return max((worst for _, worst in self._seconds), default=0.0)
