"""The benchmark runs end to end in its tiny configuration, so it cannot rot: it starts its
own Redis, servers, raw server and client processes, and writes a complete report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent


def _numbers(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_tiny_bench_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--profile", "tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = orjson.loads((out / "report.json").read_bytes())
    assert (out / "report.md").read_text().startswith("# giftstream bench")
    assert "error" not in report

    conditions = report["conditions"]
    assert conditions["machine"]["cores"] >= 1
    assert all(_numbers(v["soft"]) for v in conditions["fd_limit"].values())

    memory = report["memory"]
    assert memory["viewers"] > 0 and _numbers(memory["kb_per_viewer"])

    assert report["fanout"]
    for step in report["fanout"]:
        assert step["gifts_acked"] == step["gifts_sent"] > 0
        assert step["coins_debited"] == step["room_gift_count_delta"] == step["gifts_acked"]
        assert step["missing"] == 0 and step["duplicates"] == 0
        assert step["events_delivered_to_final_seq"] == step["events_expected"] > 0
        assert step["events_delivered"] == step["events_expected"]
        assert step["viewers_complete"] == step["room_viewers"]
        assert _numbers(step["latency_ms"]["p50"]) and _numbers(step["latency_ms"]["p99"])
        assert step["latency_ms"]["unmatched"] == 0
        assert _numbers(step["events_per_s"]) and _numbers(step["cpu_pct"]["server"])

    assert report["raw"]
    for raw in report["raw"]:
        assert raw["frames_per_s"] > 0 and raw["missing"] == 0
        assert _numbers(raw["stack_over_raw"])

    assert report["gifts"]
    for run_ in report["gifts"]:
        assert run_["gifts_acked"] > 0 and not run_["errors"]
        assert _numbers(run_["acked_per_s"]) and _numbers(run_["ack_ms"]["p99"])

    two = report["two_processes"]
    assert two["fanout"]["two"]["server_processes"] == 2
    assert two["fanout"]["two"]["missing"] == 0
    two_fanout = two["fanout"]["two"]
    assert two_fanout["events_delivered_to_final_seq"] == two_fanout["events_expected"]
    assert two["gifts"]["two"]["gifts_acked"] > 0

    verdicts = {t["verdict"] for t in report["targets"]}
    assert verdicts <= {"PASS", "MISS", "n/a"} and len(report["targets"]) >= 6
    assert "TARGETS" in run.stdout
