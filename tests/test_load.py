"""The load harness: its pure parts as plain functions; the Locust file run headless
against a real server (`server_url`); and `python -m load.run`, both against that server
with its Redis audited (`redis_url`) and on its own, starting and stopping everything.

Locust monkey-patches the process with gevent, so it only ever runs in a subprocess here.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil
import pytest

from load.popularity import RoomChooser, zipf_weights
from load.report import (
    build_summary,
    error_code,
    read_failures,
    read_stats,
    render_markdown,
    render_text,
)

REPO = Path(__file__).resolve().parent.parent
STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)

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
    assert error_code("CatchResponseError('sign-up: 503')") == "CatchResponseError: sign-up: 503"


def test_summary_from_locust_csv(tmp_path: Path) -> None:
    (tmp_path / "x_stats.csv").write_text(
        STATS_HEADER + "\n"
        "WS,gift ack,110,10,5,6.5,1,40,0,11.0,1.0,5,6,7,8,9,12,20,30,40,40,40\n"
        "WS,broadcast,900,0,8,9.1,1,60,0,90.0,0,8,9,10,11,15,25,40,50,60,60,60\n"
        ",Aggregated,1010,10,8,9,1,60,0,101,1,8,9,10,11,15,25,40,50,60,60,60\n"
    )
    (tmp_path / "x_failures.csv").write_text(
        "Method,Name,Error,Occurrences\n"
        "WS,gift ack,WsRefused('rate_limited'),7\n"
        "WS,gift ack,WsRefused('insufficient_coins'),3\n"
    )
    stats = read_stats(tmp_path / "x_stats.csv")
    assert set(stats) == {("WS", "gift ack"), ("WS", "broadcast")}
    summary = build_summary(
        run={"users": 10, "duration_s": 10, "server_workers": 1, "url": "http://127.0.0.1:1"},
        stats=stats,
        failures=read_failures(tmp_path / "x_failures.csv"),
        broadcast_sample=2,
        resources={"server": {"cpu_mean_pct": 50.0, "cpu_max_pct": 90.0, "rss_max_mb": 80.0}},
        server_metrics={},
        audit={"ran": True, "ok": True, "output": "audit OK"},
    )
    assert summary["throughput"]["gifts_acked"] == 100
    assert summary["throughput"]["gifts_acked_per_s"] == 10.0
    assert summary["throughput"]["events_delivered"] == 1800  # one timed in 2
    assert summary["errors"] == {"gift ack": {"rate_limited": 7, "insufficient_coins": 3}}
    assert summary["latency_ms"]["broadcast"]["p99"] == 50.0
    text = render_text(summary)
    assert "rate_limited 7" in text and "PASS" in text
    assert "| gift ack | rate_limited | 7 |" in render_markdown(summary)


# --- Locust against a real server ------------------------------------------------------


def read_csv_stats(prefix: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    stats = {
        name: (s.count, s.failures)
        for (_, name), s in read_stats(Path(f"{prefix}_stats.csv")).items()
    }
    failures = Path(f"{prefix}_failures.csv").read_text().splitlines()[1:]
    return stats, failures


def test_locustfile_reports_acks_and_broadcasts(server_url: str, tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    done = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(REPO / "load" / "locustfile.py"),
            "--headless", "-u", "12", "-r", "12", "-t", "6s", "--host", server_url,
            "--csv", str(prefix), "--only-summary", "--stop-timeout", "0",
            "--gs-rooms", "3", "--gs-gift-rate", "2", "--gs-chat-rate", "0.3",
            "--gs-anonymous-share", "0.25",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats, failures = read_csv_stats(prefix)
    assert failures == [], failures
    assert stats["connect"] == (12, 0)
    assert stats["POST /api/users"][0] == 9  # the gifting 3 in 4; the others watch
    gift_acks, gift_failures = stats["gift ack"]
    assert gift_acks > 20 and gift_failures == 0
    broadcasts, broadcast_failures = stats["broadcast"]
    # Every gift reaches its sender and every other viewer of its room.
    assert broadcasts > gift_acks and broadcast_failures == 0


# --- the runner ------------------------------------------------------------------------


def test_run_against_a_deployment_with_its_audit(
    server_url: str, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable, "-m", "load.run", "--url", server_url, "--redis-url", redis_url,
            "--users", "8", "--spawn-rate", "8", "--duration", "5", "--rooms", "2",
            "--gift-rate", "2", "--out", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["ran"] and summary["audit"]["ok"], summary["audit"]
    assert summary["throughput"]["gifts_acked"] > 0
    assert summary["throughput"]["events_delivered"] > summary["throughput"]["gifts_acked"]
    assert summary["failures_total"] == 0, summary["errors"]
    assert summary["resources"] == {"locust": summary["resources"]["locust"]}
    assert (out / "summary.md").read_text().startswith("# giftstream load run")
    assert (out / "report.html").exists()
    assert "audit          PASS" in done.stdout


def test_run_starts_and_stops_everything_itself(tmp_path: Path) -> None:
    out = tmp_path / "own"
    done = subprocess.run(
        [
            sys.executable, "-m", "load.run", "--users", "6", "--spawn-rate", "6",
            "--duration", "4", "--workers", "2", "--rooms", "2", "--gift-rate", "2",
            "--out", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["ok"], summary["audit"]
    assert summary["run"]["server_workers"] == 2
    assert summary["throughput"]["gifts_acked"] > 0
    assert summary["failures_total"] == 0, summary["errors"]
    assert {"server", "redis", "locust"} <= set(summary["resources"])
    assert summary["resources"]["server"]["rss_max_mb"] > 0
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
