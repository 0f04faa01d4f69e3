"""What a bench run measures: the `full` profile (the targets' conditions, a few minutes)
and `tiny` (every phase at toy size, a few seconds, for CI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    # Load-client processes (each an asyncio loop, uvloop when installed).
    client_processes: int
    # Fan-out: one room per size, gifts offered at each rate in turn. Server memory is
    # measured at 0 viewers and with the first room's viewers connected and idle.
    fanout_viewers: tuple[int, ...]
    fanout_rates: tuple[int, ...]
    # Viewers per room that time every gift event (the others count and check seqs).
    timed_viewers: int
    step_seconds: float
    # A sender offers at most this many gifts/s (the server's default limit is 20/s),
    # and holds a gift back while this many of its gifts are unanswered.
    sender_rate: float = 15.0
    max_in_flight: int = 10
    # Gifts: closed-loop senders (each sends its next gift when the last is answered),
    # spread over `gift_rooms` rooms; then `gift_open_rate` gifts/s offered open loop.
    gift_senders: tuple[int, ...]
    gift_rooms: int
    gift_open_rate: int
    gift_seconds: float
    # One process against two: the largest fan-out step and the largest closed-loop
    # sender count, split over two server processes.
    two_processes: bool = True
    # Hard bounds.
    drain_timeout_s: float = 20.0
    connect_timeout_s: float = 30.0
    max_seconds: float = 540.0


FULL = Profile(
    name="full",
    client_processes=3,
    fanout_viewers=(5000, 1000),
    fanout_rates=(50, 200, 1000),
    timed_viewers=50,
    step_seconds=5.0,
    gift_senders=(1, 50, 500),
    gift_rooms=100,
    gift_open_rate=5000,
    gift_seconds=5.0,
    drain_timeout_s=15.0,
    max_seconds=540.0,
)

TINY = Profile(
    name="tiny",
    client_processes=2,
    fanout_viewers=(20,),
    fanout_rates=(20,),
    timed_viewers=5,
    step_seconds=2.0,
    gift_senders=(1, 5),
    gift_rooms=5,
    gift_open_rate=50,
    gift_seconds=1.5,
    drain_timeout_s=10.0,
    connect_timeout_s=15.0,
    max_seconds=150.0,
)

PROFILES = {p.name: p for p in (FULL, TINY)}
