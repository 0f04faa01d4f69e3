"""Token buckets for per-connection rate limits. Pure: the caller passes the clock."""

from __future__ import annotations


class TokenBucket:
    """`burst` tokens at start, refilled at `rate_per_s` up to `burst`; each action takes
    one. A rate of 0 allows `burst` actions in all."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_at")

    def __init__(self, *, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Take one token at time `now` (seconds, monotonic); False when none is left."""
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
