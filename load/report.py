"""The load run's report.

`stats_report(stats)` reads Locust's statistics at the end of a run the way Locust's own
HTML report does (`StatsEntry.to_dict()`, `get_response_time_percentile`, the failures'
`to_dict()`), so every count in `summary.md` is the count in `report.html`. (Reading
Locust's CSV instead lost up to the last second of the run: Locust rewrites it once a
second and does not write it again at the end.) The rest is pure: the summary as JSON,
Markdown and plain text, from that report, the resource samples and the audit."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Protocol

WS = "WS"
# The percentiles the HTML report shows ("Response Time Statistics").
PERCENTILES = (0.5, 0.95, 0.99, 1.0)
# How Locust prints our exceptions in its failures: WsRefused('rate_limited').
_EXCEPTION = re.compile(r"^(\w+)\(['\"](.*)['\"]\)$")


class _Entry(Protocol):
    def to_dict(self, escape_string_values: bool = False) -> dict[str, Any]: ...
    def get_response_time_percentile(self, percent: float) -> int: ...


class _Error(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class _Stats(Protocol):
    @property
    def entries(self) -> dict[Any, Any]: ...
    @property
    def errors(self) -> dict[Any, Any]: ...
    @property
    def total(self) -> Any: ...
    @property
    def start_time(self) -> float: ...
    @property
    def last_request_timestamp(self) -> float | None: ...


def stats_report(stats: _Stats) -> dict[str, Any]:
    """Locust's statistics as its HTML report shows them: one row per request (and the
    Aggregated row), response-time percentiles, failures by error."""

    def row(entry: _Entry) -> dict[str, Any]:
        d = entry.to_dict()
        return {
            "type": d["method"] or "",
            "name": d["name"],
            "count": d["num_requests"],
            "failures": d["num_failures"],
            "avg_ms": d["avg_response_time"],
            "min_ms": d["min_response_time"],
            "max_ms": d["max_response_time"],
            "per_s": d["total_rps"],
            "avg_size": d["avg_content_length"],
            **{f"p{round(p * 100)}_ms": entry.get_response_time_percentile(p) for p in PERCENTILES},
        }

    entries = [stats.entries[key] for key in sorted(stats.entries)]
    failures = [stats.errors[key].to_dict() for key in sorted(stats.errors)]
    return {
        "requests": [row(e) for e in entries],
        "aggregated": row(stats.total),
        "failures": [
            {
                "type": f["method"] or "",
                "name": f["name"],
                "error": f["error"],
                "occurrences": f["occurrences"],
            }
            for f in failures
        ],  # fmt: skip
        "start_time": stats.start_time,
        "end_time": stats.last_request_timestamp or stats.start_time,
    }


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
    if kind == "WsConnectFailed":
        return f"connect failed: {detail}"[:80]
    return f"{kind}: {detail}"[:80]


def build_summary(
    *,
    run: dict[str, Any],
    locust: dict[str, Any],
    resources: dict[str, dict[str, float]],
    server_metrics: dict[str, float],
    audit: dict[str, Any],
) -> dict[str, Any]:
    """Everything a reader of the run needs, as one JSON-ready dict. `locust` is the
    locustfile's `--gs-report` (Locust's statistics and the viewers' counts)."""
    requests = {(r["type"], r["name"]): r for r in locust.get("requests", [])}
    acks = requests.get((WS, "gift ack"))
    chat = requests.get((WS, "chat"))
    connect = requests.get((WS, "connect"))
    viewers = locust.get("viewers", {})
    duration = float(run.get("duration_s") or 0) or 1.0
    acked = (acks["count"] - acks["failures"]) if acks else 0
    errors: dict[str, Counter[str]] = {}
    for failure in locust.get("failures", []):
        codes = errors.setdefault(failure["name"], Counter())
        codes[error_code(str(failure["error"]))] += int(failure["occurrences"])
    return {
        "run": run,
        "throughput": {
            "gift_acks": acks["count"] if acks else 0,
            "gifts_acked": acked,
            "gifts_acked_per_s": round(acked / duration, 2),
            "gifts_refused": acks["failures"] if acks else 0,
            "events_delivered": int(viewers.get("events", 0)),
            "events_delivered_per_s": round(int(viewers.get("events", 0)) / duration, 2),
            "chat_lines": (chat["count"] - chat["failures"]) if chat else 0,
        },
        "viewers": {
            "locust_workers": int(locust.get("workers", 0)),
            "connects": connect["count"] if connect else 0,
            "connect_failures": connect["failures"] if connect else 0,
            **viewers,
        },
        "latency_ms": {r["name"]: r for r in locust.get("requests", [])},
        "errors": {name: dict(codes) for name, codes in errors.items()},
        "failures": locust.get("failures", []),
        "failures_total": sum(int(f["occurrences"]) for f in locust.get("failures", [])),
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


def _ms(value: Any) -> str:
    return f"{float(value):g}" if value is not None else "-"


def _viewers_line(v: dict[str, Any]) -> str:
    return (
        f"{v.get('viewers', 0)} welcomed, {v.get('peak_connected', 0)} connected at once at "
        f"most, {v.get('connects', 0)} connects ({v.get('connect_failures', 0)} failed), "
        f"{v.get('reconnects', 0)} reconnects, {v.get('gave_up', 0)} gave up"
    )


def _events_line(v: dict[str, Any]) -> str:
    return (
        f"{v.get('events', 0)} delivered in {v.get('frames', 0)} frames, every one checked by "
        f"seq: {v.get('gaps', 0)} missing, {v.get('duplicates', 0)} duplicated"
    )


def render_text(summary: dict[str, Any]) -> str:
    run, through, latency = summary["run"], summary["throughput"], summary["latency_ms"]
    lines = [
        f"giftstream load run: {run.get('users')} users, {run.get('duration_s')} s, "
        f"{run.get('locust_processes')}, {run.get('server_workers')} server worker(s), "
        f"{run.get('url')}",
        f"  gift acks      {through['gift_acks']}: {through['gifts_acked']} acked "
        f"({through['gifts_acked_per_s']}/s), {through['gifts_refused']} refused",
        f"  events         {_events_line(summary['viewers'])}",
        f"  viewers        {_viewers_line(summary['viewers'])}",
    ]
    for name in ("gift ack", "broadcast", "chat", "connect"):
        if name in latency:
            s = latency[name]
            lines.append(
                f"  {name:<14} p50 {_ms(s['p50_ms'])} ms  p95 {_ms(s['p95_ms'])} ms  "
                f"p99 {_ms(s['p99_ms'])} ms  max {_ms(s['max_ms'])} ms  "
                f"({s['count']} requests, {s['failures']} failed)"
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
        steady = f", after the ramp {res['cpu_steady_pct']:.0f}%" if "cpu_steady_pct" in res else ""
        lines.append(
            f"  {label:<14} CPU mean {res['cpu_mean_pct']:.0f}%{steady} max "
            f"{res['cpu_max_pct']:.0f}% (100% = one core), memory max {res['rss_max_mb']:.0f} MB"
        )
    audit = summary["audit"]
    if audit.get("ran"):
        lines.append(f"  audit          {'PASS' if audit['ok'] else 'FAIL: a conservation breach'}")
    else:
        lines.append(f"  audit          not run ({audit.get('reason', '')})")
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any]) -> str:
    run, through, viewers = summary["run"], summary["throughput"], summary["viewers"]
    out = [
        "# giftstream load run",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in run.items()),
        "",
        "## Throughput",
        "",
        f"- gift acks: {through['gift_acks']} requests, {through['gifts_refused']} failed: "
        f"{through['gifts_acked']} gifts acked ({through['gifts_acked_per_s']}/s)",
        f"- room events: {_events_line(viewers)} ({through['events_delivered_per_s']}/s)",
        f"- chat lines seen by their senders: {through['chat_lines']}",
        f"- viewers: {_viewers_line(viewers)}",
        "",
        "## Requests (as Locust's report shows them)",
        "",
        "| type | request | count | failed | p50 ms | p95 ms | p99 ms | max ms | per s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary["latency_ms"].values():
        out.append(
            f"| {s['type']} | {s['name']} | {s['count']} | {s['failures']} | {_ms(s['p50_ms'])} "
            f"| {_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} | {_ms(s['max_ms'])} "
            f"| {float(s['per_s']):.2f} |"
        )
    out += [
        "",
        "`gift ack`: a gift's first send to its ack. `broadcast`: a gift event's server time "
        "to its receipt, for the viewers that time every event (a share of them; the others "
        "only check seqs). `connect`: handshake to welcome. `connection`: closes by the server.",
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
            "| process | CPU mean % | after the ramp % | CPU max % | memory max MB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, res in summary["resources"].items():
            steady = f"{res['cpu_steady_pct']:.0f}" if "cpu_steady_pct" in res else "-"
            out.append(
                f"| {label} | {res['cpu_mean_pct']:.0f} | {steady} | {res['cpu_max_pct']:.0f} "
                f"| {res['rss_max_mb']:.0f} |"
            )
        out.append("")
        out.append("CPU in percent of one core, summed over the process and its children.")
    else:
        out.append("Not sampled.")
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
