"""Staying under the server's rate limits (the `Limits` its welcome names): a token
bucket on the client's side that says how long to wait instead of being refused."""

from __future__ import annotations

import time

from giftstream_client.frames import Limits

# A margin under the server's limits: the two buckets do not start at the same instant.
SAFETY = 0.9


class TokenGate:
    """A token bucket: `delay()` is how long to wait before the next send may go (0: go
    now, and the token is taken)."""

    def __init__(self, rate_per_s: float, burst: int, *, now: float | None = None) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic() if now is None else now

    @classmethod
    def under(cls, rate_per_s: float, burst: int, *, now: float | None = None) -> TokenGate:
        """A gate a little stricter than a server bucket of `rate_per_s` and `burst`."""
        return cls(rate_per_s * SAFETY, max(1, int(burst * SAFETY)), now=now)

    @classmethod
    def for_gifts(cls, limits: Limits, *, now: float | None = None) -> TokenGate:
        return cls.under(limits.gift_per_s, limits.gift_burst, now=now)

    @classmethod
    def for_chat(cls, limits: Limits, *, now: float | None = None) -> TokenGate:
        return cls.under(limits.chat_per_s, limits.chat_burst, now=now)

    def delay(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)
        # The epsilon: a wait of exactly the computed delay must find the token there,
        # whatever the float rounding of the refill.
        if self._tokens >= 1.0 - 1e-9:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate
