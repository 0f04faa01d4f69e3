"""CPU and memory of the processes under test, sampled with psutil in a thread."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class _Series:
    cpu: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


class ResourceSampler:
    """Every `interval_s`, the CPU (percent of one core) and resident memory of each
    watched process summed with its children (uvicorn's workers are children).

    `start()`, `watch(label, pid)` at any time, `stop()`; `summary()` and `write_csv()`
    after. The thread is a daemon and ends on `stop()`.
    """

    def __init__(self, *, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._roots: dict[str, int] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._series: dict[str, _Series] = {}
        self._rows: list[tuple[float, str, float, float]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._started = time.monotonic()

    def watch(self, label: str, pid: int | None) -> None:
        if pid is None:
            return
        with self._lock:
            self._roots[label] = pid
            self._series.setdefault(label, _Series())

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                roots = dict(self._roots)
            for label, pid in roots.items():
                sample = self._sample(pid)
                if sample is None:
                    continue
                cpu, rss_mb = sample
                series = self._series[label]
                series.cpu.append(cpu)
                series.rss_mb.append(rss_mb)
                self._rows.append((time.monotonic() - self._started, label, cpu, rss_mb))

    def _sample(self, pid: int) -> tuple[float, float] | None:
        try:
            root = self._process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu = 0.0
        rss = 0
        for proc in tree:
            try:
                proc = self._process(proc.pid)
                # The first reading of a process is 0.0 (psutil needs two); fine at 2 Hz.
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
        return cpu, rss / 2**20

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def summary(self, *, steady_after_s: float | None = None) -> dict[str, dict[str, float]]:
        """Per process: CPU mean and max, memory max and last; with `steady_after_s`, also
        the CPU mean from then on (the load, without its ramp-up)."""
        out: dict[str, dict[str, float]] = {}
        for label, series in self._series.items():
            if not series.cpu:
                continue
            steady: dict[str, float] = {}
            if steady_after_s is not None:
                late = [c for t, lab, c, _ in self._rows if lab == label and t >= steady_after_s]
                if late:
                    steady["cpu_steady_pct"] = round(sum(late) / len(late), 1)
            out[label] = {
                **steady,
                "cpu_mean_pct": round(sum(series.cpu) / len(series.cpu), 1),
                "cpu_max_pct": round(max(series.cpu), 1),
                "rss_max_mb": round(max(series.rss_mb), 1),
                "rss_last_mb": round(series.rss_mb[-1], 1),
                "samples": len(series.cpu),
            }
        return out

    def write_csv(self, path: Path) -> None:
        lines = ["t_s,process,cpu_pct,rss_mb"]
        lines += [f"{t:.2f},{label},{cpu:.1f},{rss:.1f}" for t, label, cpu, rss in self._rows]
        path.write_text("\n".join(lines) + "\n")
