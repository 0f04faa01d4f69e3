"""What the viewers of one Locust process count without going through Locust's
per-request statistics: every event received, checked by seq, costs a few additions
here and nothing more. Workers send their counts to the master with Locust's own
worker reports; the master sums them. Pure: no gevent, no Locust."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Tracked(Protocol):
    """What a viewer's socket shows the counters (see `load.room_socket.RoomSocket`)."""

    @property
    def events(self) -> int: ...
    @property
    def frames(self) -> int: ...
    @property
    def gaps(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def connected(self) -> bool: ...


TOTALS = ("events", "frames", "gaps", "duplicates", "reconnects", "gave_up", "viewers")


@dataclass
class ViewerCounts:
    """Counts summed over viewers (and over workers on the master)."""

    events: int = 0  # room events received, each once (duplicates not counted)
    frames: int = 0  # events frames received
    gaps: int = 0  # events never received: jumps in seq
    duplicates: int = 0  # events received twice
    reconnects: int = 0
    gave_up: int = 0  # viewers whose reconnects failed too often in a row
    viewers: int = 0  # viewers that got a first welcome
    closes: Counter[str] = field(default_factory=Counter)  # by close code
    connected: int = 0  # a gauge: connected now
    peak_connected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in TOTALS},
            "closes": dict(self.closes),
            "connected": self.connected,
            "peak_connected": self.peak_connected,
        }


class ProcessCounters:
    """The counts of this process's viewers: live sockets are read when asked (their
    own counters are the ones their hot path updates), closed ones are kept as sums."""

    def __init__(self) -> None:
        self._live: set[Tracked] = set()
        self._retired = ViewerCounts()
        self._reported = ViewerCounts()
        self.peak_connected = 0

    def add(self, socket: Tracked) -> None:
        self._live.add(socket)

    def retire(self, socket: Tracked) -> None:
        if socket in self._live:
            self._live.discard(socket)
            for name in ("events", "frames", "gaps", "duplicates"):
                setattr(self._retired, name, getattr(self._retired, name) + getattr(socket, name))

    def reconnected(self) -> None:
        self._retired.reconnects += 1

    def gave_up(self) -> None:
        self._retired.gave_up += 1

    def welcomed(self) -> None:
        self._retired.viewers += 1

    def closed(self, code: int) -> None:
        self._retired.closes[str(code)] += 1

    def totals(self) -> ViewerCounts:
        """Everything since the start (with the live sockets as they are now)."""
        r = self._retired
        totals = ViewerCounts(
            events=r.events, frames=r.frames, gaps=r.gaps, duplicates=r.duplicates,
            reconnects=r.reconnects, gave_up=r.gave_up, viewers=r.viewers,
            closes=Counter(r.closes),
        )  # fmt: skip
        connected = 0
        for socket in self._live:
            totals.events += socket.events
            totals.frames += socket.frames
            totals.gaps += socket.gaps
            totals.duplicates += socket.duplicates
            connected += socket.connected
        totals.connected = connected
        self.peak_connected = max(self.peak_connected, connected)
        totals.peak_connected = self.peak_connected
        return totals

    def report(self) -> dict[str, Any]:
        """What changed since the last report (the gauges as they are): for a worker's
        report to the master."""
        now = self.totals()
        last = self._reported
        delta: dict[str, Any] = {name: getattr(now, name) - getattr(last, name) for name in TOTALS}
        delta["closes"] = dict(now.closes - last.closes)
        delta["connected"] = now.connected
        delta["peak_connected"] = now.peak_connected
        self._reported = now
        return delta

    def reset(self) -> None:
        self._live.clear()
        self._retired = ViewerCounts()
        self._reported = ViewerCounts()
        self.peak_connected = 0


class MasterCounters:
    """The sum of the workers' reports (each a `ProcessCounters.report()`). The gauge
    `connected` is the sum of each worker's latest; `peak_connected` the highest such
    sum seen at a report (every few seconds): sampled, like Locust's own user count."""

    def __init__(self) -> None:
        self.counts = ViewerCounts()
        self._connected: dict[str, int] = {}

    def add(self, worker: str, report: Mapping[str, Any]) -> None:
        counts = self.counts
        for name in TOTALS:
            setattr(counts, name, getattr(counts, name) + int(report.get(name, 0)))
        counts.closes.update({str(k): int(v) for k, v in report.get("closes", {}).items()})
        self._connected[worker] = int(report.get("connected", 0))
        counts.connected = sum(self._connected.values())
        counts.peak_connected = max(counts.peak_connected, counts.connected)

    def reset(self) -> None:
        self.counts = ViewerCounts()
        self._connected.clear()
