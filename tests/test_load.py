"""The load harness: its pure parts as plain functions; `python -m load.run` against a
real server with a Locust master and two workers (its Redis audited), checked against
Locust's own HTML report count by count; and on its own, starting and stopping
everything. Locust monkey-patches the process with gevent, so it only runs in
subprocesses here."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from load.counters import MasterCounters, ProcessCounters
from load.popularity import RoomChooser, zipf_weights
from load.report import build_summary, error_code, render_markdown, render_text

REPO = Path(__file__).resolve().parent.parent

# --- pure parts ------------------------------------------------------------------------


def test_zipf_gives_a_few_huge_rooms_and_a_long_tail() -> None:
    weights = zipf_weights(20, 1.2)
    assert sum(weights) == pytest.approx(1.0)
    assert weights == sorted(weights, reverse=True)
    assert weights[0] > 10 * weights[-1]
    assert zipf_weights(4, 0.0) == pytest.approx([0.25] * 4)
    with pytest.raises(ValueError):
        zipf_weights(0, 1.0)


def test_room_chooser_follows_the_weights() -> None:
    chooser = RoomChooser(["big", "mid", "small"], s=1.0)
    rng = random.Random(3)
    counts = Counter(chooser.choose(rng) for _ in range(6000))
    assert counts["big"] > counts["mid"] > counts["small"] > 0


def test_error_codes_from_locust_failures() -> None:
    assert error_code("WsRefused('insufficient_coins')") == "insufficient_coins"
    assert error_code("WsClosed('1008')") == "close 1008"
    assert error_code("WsTimeout('no ack')") == "timeout"
    assert error_code("WsConnectFailed('timed out')") == "connect failed: timed out"
    assert error_code("CatchResponseError('sign-up: 503')") == "CatchResponseError: sign-up: 503"


class FakeSocket:
    def __init__(self, events: int, gaps: int = 0, connected: bool = True) -> None:
        self.events, self.frames, self.gaps, self.duplicates = events, events, gaps, 0
        self.connected = connected


def test_counters_report_what_changed_and_the_master_sums_the_workers() -> None:
    worker = ProcessCounters()
    a, b = FakeSocket(10), FakeSocket(5, gaps=1)
    worker.add(a)
    worker.add(b)
    worker.welcomed()
    worker.welcomed()
    first = worker.report()
    assert (first["events"], first["gaps"], first["viewers"], first["connected"]) == (15, 1, 2, 2)
    a.events += 7
    worker.retire(b)  # a viewer that left keeps its counts
    worker.closed(1012)
    worker.reconnected()
    second = worker.report()
    assert (second["events"], second["connected"], second["closes"]) == (7, 1, {"1012": 1})
    master = MasterCounters()
    for report in (first, second):
        master.add("w1", report)
    master.add("w2", {"events": 100, "viewers": 3, "connected": 3})
    counts = master.counts
    assert (counts.events, counts.viewers, counts.reconnects, counts.connected) == (122, 5, 1, 4)
    assert counts.peak_connected == 4  # w1's latest (1) + w2's (3), the most seen at a report


def test_summary_from_the_locust_report() -> None:
    def row(name: str, count: int, failures: int, p99: int) -> dict[str, Any]:
        return {"type": "WS", "name": name, "count": count, "failures": failures,
                "avg_ms": 5.0, "min_ms": 1, "max_ms": 60, "per_s": count / 10, "avg_size": 0,
                "p50_ms": 5, "p95_ms": 20, "p99_ms": p99, "p100_ms": 60}  # fmt: skip

    locust = {
        "requests": [row("gift ack", 110, 10, 30), row("broadcast", 900, 0, 50)],
        "aggregated": row("Aggregated", 1010, 10, 50),
        "failures": [
            {"type": "WS", "name": "gift ack", "error": "WsRefused('rate_limited')",
             "occurrences": 7},
            {"type": "WS", "name": "gift ack", "error": "WsRefused('insufficient_coins')",
             "occurrences": 3},
        ],  # fmt: skip
        "viewers": {"events": 4000, "frames": 3000, "gaps": 0, "duplicates": 0, "viewers": 10,
                    "peak_connected": 10},  # fmt: skip
    }
    summary = build_summary(
        run={"users": 10, "duration_s": 10, "server_workers": 1, "url": "http://127.0.0.1:1"},
        locust=locust,
        resources={"server": {"cpu_mean_pct": 50.0, "cpu_max_pct": 90.0, "rss_max_mb": 80.0}},
        server_metrics={},
        audit={"ran": True, "ok": True, "output": "audit OK"},
    )
    through = summary["throughput"]
    assert (through["gift_acks"], through["gifts_acked"]) == (110, 100)
    assert through["gifts_refused"] == 10
    assert through["gifts_acked_per_s"] == 10.0
    assert through["events_delivered"] == 4000
    assert summary["errors"] == {"gift ack": {"rate_limited": 7, "insufficient_coins": 3}}
    assert summary["latency_ms"]["broadcast"]["p99_ms"] == 50
    text = render_text(summary)
    assert "rate_limited 7" in text and "PASS" in text and "0 missing, 0 duplicated" in text
    markdown = render_markdown(summary)
    assert "| gift ack | rate_limited | 7 |" in markdown
    assert "| WS | gift ack | 110 | 10 |" in markdown


def test_the_giftstream_options_are_listed() -> None:
    """Locust prints `--help` before it loads a locustfile (locust#2917), so the file
    prints Locust's help with its own options itself."""
    done = subprocess.run(
        [sys.executable, "-m", "load.locustfile", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for option in ("--gs-rooms", "--gs-timed-share", "--gs-report", "--gs-gift-rate", "--master"):
        assert option in done.stdout


# --- the runner ------------------------------------------------------------------------


def html_report(path: Path) -> dict[str, Any]:
    """The figures Locust's own HTML report shows (its embedded template arguments)."""
    match = re.search(r"window\.templateArgs = (\{.*?\})\s*\n", path.read_text())
    assert match is not None, "no statistics in the HTML report"
    args: dict[str, Any] = json.loads(match.group(1))
    return args


def assert_summary_agrees_with_locust(summary: dict[str, Any], report: Path) -> None:
    html = html_report(report)
    rows = {r["name"]: r for r in html["requests_statistics"] if r["name"] != "Aggregated"}
    assert set(rows) == set(summary["latency_ms"])
    percentiles = {r["name"]: r for r in html["response_time_statistics"]}
    for name, row in rows.items():
        ours = summary["latency_ms"][name]
        assert (ours["count"], ours["failures"]) == (row["num_requests"], row["num_failures"])
        assert ours["max_ms"] == row["max_response_time"]
        for p in ("0.5", "0.95", "0.99"):
            assert ours[f"p{round(float(p) * 100)}_ms"] == percentiles[name][p], (name, p)
    def failures(rows: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
        return sorted((f["name"], f["error"], f["occurrences"]) for f in rows)

    assert failures(summary["failures"]) == failures(html["failures_statistics"])
    acks = rows.get("gift ack")
    if acks is not None:
        through = summary["throughput"]
        assert through["gift_acks"] == acks["num_requests"]
        assert through["gifts_acked"] == acks["num_requests"] - acks["num_failures"]


def test_run_with_a_master_and_two_workers_against_a_deployment(
    server_url: str, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable, "-m", "load.run", "--url", server_url, "--redis-url", redis_url,
            "--users", "12", "--spawn-rate", "12", "--duration", "8", "--rooms", "2",
            "--gift-rate", "2", "--timed-share", "0.3", "--processes", "2", "--out", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["ran"] and summary["audit"]["ok"], summary["audit"]
    assert summary["failures_total"] == 0, summary["errors"]
    # Rooms opened once by the master, shared by both workers' viewers: 2 rooms in all.
    assert summary["run"]["locust_processes"] == "Locust master + 2 worker(s)"
    viewers = summary["viewers"]
    assert viewers["locust_workers"] == 2
    assert 1 <= viewers["viewers"] <= 12 and viewers["gave_up"] == 0
    assert viewers["events"] >= summary["throughput"]["gifts_acked"]
    assert (viewers["gaps"], viewers["duplicates"]) == (0, 0)
    assert {"locust master", "locust worker 1", "locust worker 2"} <= set(summary["resources"])
    assert_summary_agrees_with_locust(summary, out / "report.html")
    assert (out / "summary.md").read_text().startswith("# giftstream load run")
    assert "audit          PASS" in done.stdout
    rooms = json.loads(subprocess.run(
        [sys.executable, "-c", f"import httpx; print(httpx.get('{server_url}/api/rooms').text)"],
        capture_output=True, text=True, timeout=30).stdout)["rooms"]  # fmt: skip
    assert not [r for r in rooms if r["title"].startswith("Load room")], "rooms left live"


def test_run_starts_and_stops_everything_itself(tmp_path: Path) -> None:
    out = tmp_path / "own"
    done = subprocess.run(
        [
            sys.executable, "-m", "load.run", "--users", "6", "--spawn-rate", "6",
            "--duration", "6", "--workers", "2", "--rooms", "2", "--gift-rate", "2",
            "--out", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["ok"], summary["audit"]
    assert summary["run"]["server_workers"] == 2
    assert 1 <= summary["viewers"]["viewers"] <= 6
    assert summary["failures_total"] == 0, summary["errors"]
    assert {"server", "redis", "locust"} <= set(summary["resources"])
    assert summary["resources"]["server"]["rss_max_mb"] > 0
    assert_summary_agrees_with_locust(summary, out / "report.html")
    # Nothing it started is left running: no process works in its report folder.
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        try:
            data_dir = proc.environ().get("GS_DATA_DIR", "")
        except psutil.Error:
            data_dir = ""
        if str(out) in cmdline or data_dir.startswith(str(out)):
            leftovers.append(cmdline)
    assert leftovers == []
