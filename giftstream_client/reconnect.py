"""When a room socket is reopened, and after how long: the one rule the asyncio client
and its gevent twin share. Pure: the caller sleeps, and passes the randomness.

- A close the client asked for is final, and so are 4401 (bad or expired token) and 4404
  (unknown or ended room): reconnecting cannot help. Every other close (1006 lost, 1008
  too slow, 1012 the server restarts, 1013 try later, …) is reopened with `since`, so
  nothing is missed.
- The pause grows with each failure in a row (`base_s` · 2ⁿ, at most `cap_s`) and is
  jittered (half of it fixed, half random), so a thousand viewers dropped at once by a
  restarting server come back spread out instead of all at once.
- A connection that got its welcome is a success: the count of failures starts again,
  so a long-lived viewer survives any number of closes spread over its life; only
  `max_failures` failures in a row give up.
"""

from __future__ import annotations

import random

# Close codes after which reconnecting cannot help.
FINAL_CLOSE_CODES = frozenset({4401, 4404})


def should_reconnect(code: int | None) -> bool:
    """Whether a close with `code` (None: the client closed it) is worth reopening."""
    return code is not None and code not in FINAL_CLOSE_CODES


class Backoff:
    """Failures in a row and the pause before the next attempt.

    `failed()` after a connection failed or closed: the pause to wait before the next
    attempt, or None once `max_failures` failures in a row say give up (None: never).
    `succeeded()` once a connection is welcomed: the count starts again."""

    def __init__(
        self,
        *,
        base_s: float = 0.25,
        cap_s: float = 10.0,
        max_failures: int | None = 8,
        rng: random.Random | None = None,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.max_failures = max_failures
        self.failures = 0
        self._rng = rng or random.Random()

    def failed(self) -> float | None:
        self.failures += 1
        if self.max_failures is not None and self.failures > self.max_failures:
            return None
        step = min(self.cap_s, self.base_s * 2.0 ** (self.failures - 1))
        return step / 2 + self._rng.uniform(0.0, step / 2)

    def succeeded(self) -> None:
        self.failures = 0

    @property
    def exhausted(self) -> bool:
        return self.max_failures is not None and self.failures > self.max_failures
