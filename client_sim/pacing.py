"""Staying under the server's per-connection rate limits (DESIGN section 4: gifts 20/s
with bursts of 50, chat 2/s with bursts of 5): a client-side token bucket that waits
instead of being refused."""

from __future__ import annotations

import time

# Keep a margin under the server's limits: the two clocks do not start together.
SAFETY = 0.9


class TokenGate:
    """A token bucket: `delay()` is how long to wait before the next send may go."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    @classmethod
    def under(cls, server_rate_per_s: float, server_burst: int) -> TokenGate:
        """A gate a little stricter than the server's own bucket."""
        return cls(server_rate_per_s * SAFETY, max(1, int(server_burst * SAFETY)))

    def delay(self, now: float | None = None) -> float:
        """Seconds until a token is free (0 when one is); takes it when free."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        # The epsilon: a wait of exactly the computed delay must find the token there,
        # whatever the float rounding of the refill.
        if self._tokens >= 1.0 - 1e-9:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate


GIFT_RATE_PER_S = 20.0
GIFT_BURST = 50
CHAT_RATE_PER_S = 2.0
CHAT_BURST = 5
