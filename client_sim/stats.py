"""What the bot counts and measures, and the summary it prints at the end."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from giftstream_client.frames import Limits

SATURATED_LAG_S = 0.050
# Bucket width: each bucket is 2% wider than the one below, so a percentile read from the
# histogram is within 2% of the true value, in constant memory however many samples.
_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)


class LatencyHistogram:
    """Latencies in seconds, kept as log-spaced bucket counts (1 µs up, 2% wide)."""

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        micros = seconds * 1e6
        index = 0 if micros < 1.0 else int(math.log(micros) / _LOG_GROWTH) + 1
        self._buckets[index] += 1
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    def percentile(self, p: float) -> float | None:
        """The `p`-th percentile (0..100) in seconds, None when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                if index == 0:
                    return 0.0
                # The bucket's geometric middle, never above the largest sample.
                middle = math.pow(_GROWTH, index - 0.5) / 1e6
                return min(middle, self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, float | int | None]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 2)

        return {
            "count": self.count,
            "p50": ms(self.percentile(50)),
            "p95": ms(self.percentile(95)),
            "p99": ms(self.percentile(99)),
            "max": ms(self.max_s if self.count else None),
            "mean": ms(self.total_s / self.count if self.count else None),
        }


@dataclass
class SimStats:
    """Counters shared by every viewer of one run (one event loop: no locks needed)."""

    viewers_planned: int = 0
    anonymous_planned: int = 0
    viewers_connected: int = 0
    connected_now: int = 0
    peak_connected: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    # The most reconnects of any one viewer.
    reconnects_max: int = 0
    # Viewers that gave up: their reconnects failed `max_reconnects` times in a row.
    gave_up: int = 0
    # The rate limits the bot paced itself under (from the first welcome).
    limits: Limits = field(default_factory=Limits)
    signup_failures: Counter[str] = field(default_factory=Counter)
    recharges: int = 0
    recharge_failures: Counter[str] = field(default_factory=Counter)
    gifts_sent: int = 0
    gifts_acked: int = 0
    gifts_refused: Counter[str] = field(default_factory=Counter)
    gifts_unanswered: int = 0
    # Sends of an already sent gift (same request_id) after a drop or a retryable refusal.
    gifts_resent: int = 0
    coins_spent: int = 0
    chats_sent: int = 0
    chats_refused: Counter[str] = field(default_factory=Counter)
    frames_received: int = 0
    events_received: Counter[str] = field(default_factory=Counter)
    seq_gaps: int = 0
    seq_duplicates: int = 0
    ack_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    broadcast_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # The bot's own event-loop delay: a busy bot adds it to every latency above.
    loop_lag: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def saturated(self) -> bool:
        """The bot itself was the bottleneck: its loop ran over 50 ms late at p95."""
        p95 = self.loop_lag.percentile(95)
        return p95 is not None and p95 > SATURATED_LAG_S

    def now_connected(self, count: int) -> None:
        """How many are connected at this moment (the status ticker counts them)."""
        self.connected_now = count
        self.peak_connected = max(self.peak_connected, count)


@dataclass(frozen=True)
class Summary:
    """The end-of-run report: `as_dict()` for JSON, `render()` for people."""

    duration_s: float
    rooms: list[str]
    stats: SimStats

    def as_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "duration_s": round(self.duration_s, 3),
            "rooms": self.rooms,
            "viewers": {
                "planned": s.viewers_planned,
                "anonymous": s.anonymous_planned,
                "connected": s.viewers_connected,
                "peak_connected": s.peak_connected,
                "connect_failures": dict(s.connect_failures),
                "closes": dict(s.closes),
                "reconnects": s.reconnects,
                "reconnects_max": s.reconnects_max,
                "gave_up": s.gave_up,
                "signup_failures": dict(s.signup_failures),
            },
            "limits": {
                "gift_per_s": s.limits.gift_per_s,
                "gift_burst": s.limits.gift_burst,
                "chat_per_s": s.limits.chat_per_s,
                "chat_burst": s.limits.chat_burst,
                "from_server": s.limits.from_server,
            },
            "recharges": {"ok": s.recharges, "failed": dict(s.recharge_failures)},
            "gifts": {
                "sent": s.gifts_sent,
                "acked": s.gifts_acked,
                "refused": dict(s.gifts_refused),
                "unanswered": s.gifts_unanswered,
                "resent": s.gifts_resent,
                "coins_spent": s.coins_spent,
            },
            "chat": {"sent": s.chats_sent, "refused": dict(s.chats_refused)},
            "events": {
                "frames": s.frames_received,
                "received": sum(s.events_received.values()),
                "by_kind": dict(s.events_received),
                "seq_gaps": s.seq_gaps,
                "seq_duplicates": s.seq_duplicates,
            },
            "ack_latency_ms": s.ack_latency.summary_ms(),
            "broadcast_latency_ms": s.broadcast_latency.summary_ms(),
            "bot_loop_lag_ms": s.loop_lag.summary_ms(),
            "bot_saturated": s.saturated,
        }

    def render(self) -> str:
        s = self.stats
        refused = sum(s.gifts_refused.values())
        events = sum(s.events_received.values())
        lines = [
            f"client_sim summary: {self.duration_s:.1f} s, {len(self.rooms)} room(s)",
            f"  viewers    {s.viewers_planned} planned ({s.anonymous_planned} anonymous), "
            f"{s.viewers_connected} connected, peak {s.peak_connected} at once, "
            f"{sum(s.connect_failures.values())} failed to connect{_codes(s.connect_failures)}, "
            f"{s.reconnects} reconnected, {s.gave_up} gave up; "
            f"closed by the server{_codes(s.closes) or ' 0'}",
            f"  gifts      {s.gifts_sent} sent, {s.gifts_acked} acked, {refused} refused"
            f"{_codes(s.gifts_refused)}, {s.gifts_unanswered} unanswered, "
            f"{s.gifts_resent} resent; {s.coins_spent} coins spent; {s.recharges} recharges",
            f"  chat       {s.chats_sent} sent, {sum(s.chats_refused.values())} refused"
            f"{_codes(s.chats_refused)}",
            f"  events     {events} received{_codes(s.events_received)} in "
            f"{s.frames_received} frames; {s.seq_gaps} seq gaps, {s.seq_duplicates} duplicates",
            "  ack        " + _latency_line(s.ack_latency),
            "  broadcast  " + _latency_line(s.broadcast_latency) + " (event ts to receipt)",
            f"  limits     {s.limits.describe()}",
        ]
        lines.append("  loop lag   " + _latency_line(s.loop_lag))
        if s.saturated:
            lines.append(
                "  WARNING    the bot was CPU-bound: the latencies above include its own "
                "delay; run fewer viewers per process (or several processes)"
            )
        if s.signup_failures or s.recharge_failures:
            lines.append(
                f"  setup      signup failures{_codes(s.signup_failures) or ' 0'}, "
                f"recharge failures{_codes(s.recharge_failures) or ' 0'}"
            )
        return "\n".join(lines)


def _codes(counts: Counter[str]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{code} {n}" for code, n in counts.most_common()) + ")"


def _latency_line(histogram: LatencyHistogram) -> str:
    if histogram.count == 0:
        return "no samples"
    parts = [f"p{p} {(histogram.percentile(p) or 0.0) * 1000:.1f} ms" for p in (50, 95, 99)]
    return "  ".join(parts) + f"  max {histogram.max_s * 1000:.1f} ms ({histogram.count} samples)"
