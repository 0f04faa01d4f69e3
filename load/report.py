"""The load run's report: Locust's CSV read back, resource samples and the audit added,
rendered as JSON (summary.json), Markdown (summary.md) and plain text (stdout). Pure:
reads the files it is given, starts nothing."""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WS = "WS"
# How Locust prints our exceptions in its failures CSV: WsRefused('rate_limited').
_EXCEPTION = re.compile(r"^(\w+)\(['\"](.*)['\"]\)$")


@dataclass(frozen=True)
class RequestStats:
    """One row of Locust's `*_stats.csv`; times in ms."""

    type: str
    name: str
    count: int
    failures: int
    rps: float
    avg_ms: float
    max_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def latency(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "failures": self.failures,
            "per_s": round(self.rps, 2),
            "p50": self.p50_ms,
            "p95": self.p95_ms,
            "p99": self.p99_ms,
            "avg": round(self.avg_ms, 2),
            "max": round(self.max_ms, 2),
        }


def read_stats(path: Path) -> dict[tuple[str, str], RequestStats]:
    """Locust's `<prefix>_stats.csv`, by (type, name); the Aggregated row is left out."""
    rows: dict[tuple[str, str], RequestStats] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                continue
            rows[(row["Type"], row["Name"])] = RequestStats(
                type=row["Type"],
                name=row["Name"],
                count=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=_float(row["Requests/s"]),
                avg_ms=_float(row["Average Response Time"]),
                max_ms=_float(row["Max Response Time"]),
                p50_ms=_float(row["50%"]),
                p95_ms=_float(row["95%"]),
                p99_ms=_float(row["99%"]),
            )
    return rows


def read_failures(path: Path) -> dict[str, Counter[str]]:
    """Locust's `<prefix>_failures.csv` as {request name: {error code: occurrences}}."""
    failures: dict[str, Counter[str]] = {}
    if not path.exists():
        return failures
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            code = error_code(row["Error"])
            failures.setdefault(row["Name"], Counter())[code] += int(row["Occurrences"])
    return failures


def error_code(error: str) -> str:
    """The stable code in a Locust failure: `WsRefused('rate_limited')` -> rate_limited,
    `WsClosed('1008')` -> close 1008, anything else its first 80 characters."""
    match = _EXCEPTION.match(error.strip())
    if match is None:
        return error.strip()[:80]
    kind, detail = match.groups()
    if kind == "WsRefused":
        return detail
    if kind == "WsClosed":
        return f"close {detail}"
    if kind == "WsTimeout":
        return "timeout"
    return f"{kind}: {detail}"[:80]


def build_summary(
    *,
    run: dict[str, Any],
    stats: dict[tuple[str, str], RequestStats],
    failures: dict[str, Counter[str]],
    broadcast_sample: int,
    resources: dict[str, dict[str, float]],
    server_metrics: dict[str, float],
    audit: dict[str, Any],
) -> dict[str, Any]:
    """Everything a reader of the run needs, as one JSON-ready dict."""
    acks = stats.get((WS, "gift ack"))
    broadcast = stats.get((WS, "broadcast"))
    chat = stats.get((WS, "chat"))
    acked = (acks.count - acks.failures) if acks else 0
    duration = float(run.get("duration_s") or 0) or 1.0
    return {
        "run": run,
        "throughput": {
            "gifts_acked": acked,
            "gifts_acked_per_s": round(acked / duration, 2),
            "gifts_refused": acks.failures if acks else 0,
            # Only gift events whose sender is in the Locust process are timed (and so
            # counted); with a sample of 1 in N, each counted one stands for N.
            "events_delivered": (broadcast.count * broadcast_sample) if broadcast else 0,
            "events_delivered_per_s": round(
                (broadcast.count * broadcast_sample) / duration if broadcast else 0.0, 2
            ),
            "chat_lines": chat.count - chat.failures if chat else 0,
        },
        "latency_ms": {s.name: s.latency() for s in stats.values()},
        "errors": {name: dict(codes) for name, codes in failures.items()},
        "failures_total": sum(sum(c.values()) for c in failures.values()),
        "resources": resources,
        "server_metrics": server_metrics,
        "server_side_ms": _server_side_means(server_metrics),
        "audit": audit,
    }


def _server_side_means(metrics: dict[str, float]) -> dict[str, float]:
    """Means the server measured itself over the run (from its histograms' sum and count):
    beside the client-side latencies they tell the server's share from the network's and
    the load generator's."""
    means: dict[str, float] = {}
    for name, label in (
        ("giftstream_gift_ack_seconds", "gift_ack_mean"),
        ("giftstream_fanout_flush_seconds", "fanout_flush_mean"),
    ):
        total = _summed(metrics, f"{name}_sum")
        count = _summed(metrics, f"{name}_count")
        if count > 0:
            means[label] = round(total / count * 1000.0, 3)
    return means


def _summed(metrics: dict[str, float], name: str) -> float:
    """A metric's value summed over its label sets."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def render_text(summary: dict[str, Any]) -> str:
    run, through, latency = summary["run"], summary["throughput"], summary["latency_ms"]
    lines = [
        f"giftstream load run: {run.get('users')} users, {run.get('duration_s')} s, "
        f"{run.get('server_workers')} server worker(s), {run.get('url')}",
        f"  gifts acked    {through['gifts_acked']} ({through['gifts_acked_per_s']}/s), "
        f"{through['gifts_refused']} refused",
        f"  events         {through['events_delivered']} delivered "
        f"({through['events_delivered_per_s']}/s)",
    ]
    for name in ("gift ack", "broadcast", "chat", "connect"):
        if name in latency:
            s = latency[name]
            lines.append(
                f"  {name:<14} p50 {s['p50']:g} ms  p95 {s['p95']:g} ms  p99 {s['p99']:g} ms"
                f"  max {s['max']:g} ms  ({s['count']} samples, {s['failures']} failed)"
            )
    server_side = summary.get("server_side_ms") or {}
    if server_side:
        listed = ", ".join(f"{name} {ms:g} ms" for name, ms in server_side.items())
        lines.append(f"  server-side    {listed} (its own histograms)")
    errors = summary["errors"]
    if errors:
        for name, codes in errors.items():
            listed = ", ".join(f"{code} {n}" for code, n in codes.items())
            lines.append(f"  errors {name}: {listed}")
    else:
        lines.append("  errors         none")
    for label, res in summary["resources"].items():
        lines.append(
            f"  {label:<14} CPU mean {res['cpu_mean_pct']:.0f}% max {res['cpu_max_pct']:.0f}% "
            f"(100% = one core), memory max {res['rss_max_mb']:.0f} MB"
        )
    audit = summary["audit"]
    if audit.get("ran"):
        lines.append(f"  audit          {'PASS' if audit['ok'] else 'FAIL: a conservation breach'}")
    else:
        lines.append(f"  audit          not run ({audit.get('reason', '')})")
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any]) -> str:
    run, through = summary["run"], summary["throughput"]
    out = [
        "# giftstream load run",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in run.items()),
        "",
        "## Throughput",
        "",
        f"- gifts acked: {through['gifts_acked']} ({through['gifts_acked_per_s']}/s), "
        f"refused: {through['gifts_refused']}",
        f"- gift events delivered to viewers: {through['events_delivered']} "
        f"({through['events_delivered_per_s']}/s)",
        f"- chat lines: {through['chat_lines']}",
        "",
        "## Latency (ms)",
        "",
        "| request | count | failed | p50 | p95 | p99 | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summary["latency_ms"].items():
        out.append(
            f"| {name} | {s['count']} | {s['failures']} | {s['p50']:g} | {s['p95']:g} "
            f"| {s['p99']:g} | {s['max']:g} |"
        )
    out += [
        "",
        "`gift ack`: a gift's send to its ack. `broadcast`: a gift's send to each viewer's "
        "receipt of its event (senders in the Locust process). `connect`: handshake to welcome.",
        "",
        "## Errors",
        "",
    ]
    if summary["errors"]:
        out += ["| request | code | count |", "| --- | --- | ---: |"]
        for name, codes in summary["errors"].items():
            out += [f"| {name} | {code} | {n} |" for code, n in codes.items()]
    else:
        out.append("None.")
    out += ["", "## Resources", ""]
    if summary["resources"]:
        out += [
            "| process | CPU mean % | CPU max % | memory max MB |",
            "| --- | ---: | ---: | ---: |",
        ]
        for label, res in summary["resources"].items():
            out.append(
                f"| {label} | {res['cpu_mean_pct']:.0f} | {res['cpu_max_pct']:.0f} "
                f"| {res['rss_max_mb']:.0f} |"
            )
        out.append("")
        out.append("CPU in percent of one core, summed over the process and its children.")
    else:
        out.append("Not sampled (an existing deployment).")
    if summary["server_metrics"]:
        out += ["", "## Server counters over the run (from /metrics)", ""]
        out += [f"- {name}: {value:g}" for name, value in summary["server_metrics"].items()]
        for name, ms in (summary.get("server_side_ms") or {}).items():
            out.append(f"- {name} (server-side): {ms:g} ms")
    audit = summary["audit"]
    out += ["", "## Audit", ""]
    if audit.get("ran"):
        out.append("**PASS**" if audit["ok"] else "**FAIL**: a conservation breach")
        out += ["", "```", audit.get("output", "").rstrip(), "```"]
    else:
        out.append(f"Not run: {audit.get('reason', '')}")
    return "\n".join(out) + "\n"


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return 0.0  # Locust writes "N/A" for percentiles of an empty row
