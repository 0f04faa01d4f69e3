"""The bench run: start Redis, the server(s) and the load-client processes
(`bench.session`), measure each phase, stop everything.

Phases, in this order (every one bounded in load and time), one module each:
1. `bench.memory`: server RSS at 0 viewers, then with the first fan-out room's viewers idle;
2. `bench.fanout`: per room size, gifts offered at each rate by fresh senders (each at most
   `sender_rate` gifts/s); delivery checked for every viewer by seq, latency timed on a
   sample, the loop's worst lag recorded;
3. `bench.raw_ceiling`: a bare websockets server broadcasting frames of the same size and
   count of events to as many clients;
4. `bench.gifts`: closed-loop senders over many rooms, then an open-loop offered rate, with
   the server's CPU per acked gift;
5. `bench.two_processes`: the largest fan-out step and the largest sender count, split over
   two server processes sharing the Redis.
A phase that fails (or runs out of time) is reported, and the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import fanout, gifts, memory, raw_ceiling, two_processes
from bench.memory import IdleRoom
from bench.session import BenchSession

PHASES = ("memory", "fan-out", "raw ceiling", "gifts", "two processes")


class Bench(BenchSession):
    # The phases to run (None: every one); `bench.__main__ --only`.
    only: frozenset[str] | None = None

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        idle: list[IdleRoom] = []

        async def memory_phase() -> None:
            idle.append(await memory.run(self))

        async def fanout_phase() -> None:
            await fanout.run(self, idle[0] if idle else None)

        phases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("memory", memory_phase),
            ("fan-out", fanout_phase),
            ("raw ceiling", lambda: raw_ceiling.run(self)),
            ("gifts", lambda: gifts.run(self)),
        ]
        if self.p.two_processes:
            phases.append(("two processes", lambda: two_processes.run(self)))
        if self.only is not None:
            phases = [(name, phase) for name, phase in phases if name in self.only]
        try:
            await self.setup()
            for name, phase in phases:
                try:
                    await phase()
                except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                    message = f"{name}: {type(exc).__name__}: {exc}"
                    self.report.setdefault("errors", []).append(message)
                    self.say(f"  PHASE FAILED: {message}")
                    await self.on_clients("close_all", timeout=30)
        finally:
            await self.teardown()
        self.report["seconds"] = round(time.monotonic() - started, 1)
        return self.report
