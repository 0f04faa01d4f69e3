"""The bench's figures: percentiles, the targets with PASS/MISS, py-spy summaries, and
the JSON and markdown reports."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

STORM_VIEWERS = 5000
STORM_RATE = 1000
STORM_P99_MS = 250.0
RAW_RATIO = 0.8
ACKED_PER_PROCESS = 10_000
ACK_P99_MS = 20.0
ACK_RATE = 5000
KB_PER_VIEWER = 13.0
# "No single flush holds the event loop for more than a few milliseconds."
LOOP_LAG_MS = 10.0
CPU_US_PER_GIFT = 100.0


def percentiles(values: list[float]) -> dict[str, Any]:
    """p50, p99 (nearest rank) and max, in the values' unit, and the sample count."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, int(q * n + 0.999999) - 1))], 2)

    return {"p50": rank(0.50), "p99": rank(0.99), "max": round(ordered[-1], 2), "samples": n}


_LINE = re.compile(r":\d+\)$")


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (to/module.py)`."""
    frame = _LINE.sub(")", frame.strip())
    head, sep, path = frame.partition(" (")
    if not sep:
        return frame
    parts = path.rstrip(")").split("/")
    return f"{head} ({'/'.join(parts[-2:])})"


def summarize_collapsed(text: str, *, top: int = 15) -> dict[str, Any]:
    """Summarize py-spy's raw (collapsed) output: the share of samples spent in each
    function itself (self) and under it (inclusive)."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if ".py" in f or ".pyx" in f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            under[name] += count
    return {
        "samples": total,
        "self": [[name, round(100 * c / total, 1)] for name, c in own.most_common(top)]
        if total
        else [],
        "inclusive": [[name, round(100 * c / total, 1)] for name, c in under.most_common(top)]
        if total
        else [],
    }


# --- targets -------------------------------------------------------------------------


def _storm(report: dict[str, Any]) -> dict[str, Any] | None:
    steps: list[dict[str, Any]] = [
        s for s in report.get("fanout", []) if s["server_processes"] == 1
    ]
    if not steps:
        return None
    return max(steps, key=lambda s: (s["room_viewers"], s["rate_offered"]))


def _target(
    name: str, conditions: str, measured: str, passed: bool | None, note: str = ""
) -> dict[str, Any]:
    verdict = "n/a" if passed is None else ("PASS" if passed else "MISS")
    return {
        "target": name,
        "conditions": conditions,
        "measured": measured,
        "verdict": verdict,
        "note": note,
    }


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the run's measured value and PASS/MISS. A run that
    did not load to the target's conditions (the tiny profile) says so in `note`."""
    out: list[dict[str, Any]] = []
    storm = _storm(report)
    if storm is not None:
        cond = (
            f"1 room of {storm['room_viewers']} viewers, {storm['rate_offered']} gifts/s "
            f"offered by {storm['senders']} senders for {storm['duration_s']:g} s, 1 process"
        )
        scaled = storm["room_viewers"] >= STORM_VIEWERS and storm["rate_offered"] >= STORM_RATE
        note = "" if scaled else "below the target's load (5,000 viewers, 1,000 gifts/s)"
        debited = (
            storm["gifts_offered"]
            == storm["gifts_sent"]
            == storm["gifts_acked"]
            == storm["coins_debited"]
            == storm["room_gift_count_delta"]
            and not storm["gift_errors"]
            and storm["unanswered"] == 0
        )
        out.append(
            _target(
                "gift storm: every gift debited",
                cond,
                f"{storm['gifts_sent']}/{storm['gifts_offered']} sent "
                f"({storm['gifts_held_back']} held back), {storm['gifts_acked']} acked, "
                f"{storm['coins_debited']} coins debited, room count "
                f"+{storm['room_gift_count_delta']}",
                debited,
                note,
            )
        )
        delivered = (
            storm["missing"] == 0
            and storm["duplicates"] == 0
            and storm["viewers_complete"] == storm["room_viewers"]
            and storm["events_delivered_to_final_seq"] == storm["events_expected"]
        )
        out.append(
            _target(
                "gift storm: every gift event delivered to every viewer",
                cond,
                f"{storm['events_delivered_to_final_seq']}/{storm['events_expected']} events "
                f"up to the final seq, missing "
                f"{storm['missing']}, duplicates {storm['duplicates']}, "
                f"{storm['viewers_complete']}/{storm['room_viewers']} viewers complete",
                delivered,
                note,
            )
        )
        lag = storm.get("loop_lag_max_ms")
        if lag is not None:
            out.append(
                _target(
                    f"gift storm: the event loop's worst lag <= {LOOP_LAG_MS:g} ms",
                    cond,
                    f"{lag} ms (a callback due every 10 ms, the latest it ran)",
                    lag <= LOOP_LAG_MS,
                    note,
                )
            )
        p99 = storm["latency_ms"]["p99"]
        out.append(
            _target(
                f"gift storm: broadcast p99 <= {STORM_P99_MS:g} ms",
                cond,
                f"p99 {p99} ms (p50 {storm['latency_ms']['p50']} ms, "
                f"{storm['latency_ms']['samples']} samples)",
                p99 is not None and p99 <= STORM_P99_MS,
                note,
            )
        )
    raws = [r for r in report.get("raw", []) if r.get("stack_over_raw") is not None]
    if raws:
        raw = max(raws, key=lambda r: r["clients"])
        ratio = raw["stack_over_raw"]
        scaled = storm is not None and storm["rate_offered"] >= STORM_RATE
        out.append(
            _target(
                f"frames/s through the stack >= {RAW_RATIO:g} x raw ceiling",
                f"{raw['clients']} clients, {raw['frame_bytes']} B frames, 20 ms window; "
                f"stack at {raw['stack_step']}",
                f"{raw['stack_frames_per_s']} / {raw['frames_per_s']} frames/s = {ratio}",
                ratio >= RAW_RATIO,
                ""
                if scaled
                else "below the storm's rate the stack has no event for most windows, so "
                "it writes fewer frames than the raw server's one per window",
            )
        )
    gifts = [g for g in report.get("gifts", []) if g["server_processes"] == 1]
    if gifts:
        best = max(gifts, key=lambda g: g["acked_per_s_per_process"])
        out.append(
            _target(
                f">= {ACKED_PER_PROCESS:,} acked gifts/s per process",
                f"{best['label']}: {best['senders']} senders over {best['rooms']} rooms, 1 process",
                f"{best['acked_per_s_per_process']} acked/s",
                best["acked_per_s_per_process"] >= ACKED_PER_PROCESS,
            )
        )
        costs = [g for g in gifts if g.get("server_cpu_us_per_gift") is not None]
        if costs:
            cheapest = min(costs, key=lambda g: g["server_cpu_us_per_gift"])
            out.append(
                _target(
                    f"server CPU per acked gift <= {CPU_US_PER_GIFT:g} us",
                    f"{cheapest['label']}: {cheapest['senders']} senders over "
                    f"{cheapest['rooms']} rooms, 1 process (its CPU over the run / acked)",
                    f"{cheapest['server_cpu_us_per_gift']} us ({cheapest['acked_per_s']} acked/s)",
                    cheapest["server_cpu_us_per_gift"] <= CPU_US_PER_GIFT,
                )
            )
        opened = [g for g in gifts if g["mode"] == "open"]
        if opened:
            g = opened[0]
            scaled = (g["rate_offered"] or 0) >= ACK_RATE
            p99 = g["ack_ms"]["p99"]
            out.append(
                _target(
                    f"ack p99 < {ACK_P99_MS:g} ms at {ACK_RATE:,} gifts/s over many rooms",
                    f"{g['rate_offered']:g} gifts/s offered by {g['senders']} senders over "
                    f"{g['rooms']} rooms, 1 process",
                    f"p99 {p99} ms (p50 {g['ack_ms']['p50']} ms), {g['acked_per_s']} acked/s",
                    p99 is not None and p99 < ACK_P99_MS,
                    "" if scaled else "below the target's rate (5,000 gifts/s)",
                )
            )
    memory = report.get("memory")
    if memory:
        out.append(
            _target(
                f"<= {KB_PER_VIEWER:g} KB per idle viewer",
                f"server RSS at 0 and {memory['viewers']} idle viewers, 1 process",
                f"{memory['kb_per_viewer']} KB",
                memory["kb_per_viewer"] <= KB_PER_VIEWER,
            )
        )
    return out


def target_lines(targets: list[dict[str, Any]]) -> list[str]:
    lines = []
    for t in targets:
        note = f"  ({t['note']})" if t["note"] else ""
        lines.append(
            f"  {t['verdict']:<4}  {t['target']}: {t['measured']}  [{t['conditions']}]{note}"
        )
    return lines


# --- files ---------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _cpu(c: dict[str, Any]) -> str:
    text = (
        f"server {c.get('raw', c['server'])}%, redis {c['redis']}%, clients "
        + "+".join(str(x) for x in c["clients"])
        + f"%, machine {c['machine']}%"
    )
    if c["clients_saturated"]:
        text += " (clients saturated)"
    return text


def markdown(report: dict[str, Any], printed: list[str]) -> str:
    c = report.get("conditions", {})
    m = c.get("machine", {})
    lines = [f"# giftstream bench ({report['profile']} profile)", ""]
    lines += [
        f"Machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('memory_gb')} GB, "
        f"Python {m.get('python')}, {m.get('redis')}. Everything on 127.0.0.1. "
        f"Client processes: {c.get('client_processes')} ({c.get('client_loop')} loop). "
        f"Run took {report.get('seconds')} s.",
        "",
        "Server environment: "
        + ", ".join(f"`{k}={v}`" for k, v in c.get("server_env", {}).items()),
        "",
        "File-descriptor limits (soft/hard): "
        + ", ".join(f"{k} {v['soft']}/{v['hard']}" for k, v in c.get("fd_limit", {}).items()),
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["verdict", "target", "measured", "conditions", "note"],
        [
            [t["verdict"], t["target"], t["measured"], t["conditions"], t["note"]]
            for t in report.get("targets", [])
        ],
    )
    if report.get("memory"):
        mem = report["memory"]
        lines += [
            "## Memory per idle viewer",
            "",
            f"Server RSS {mem['rss_0_mb']} MB at 0 viewers, {mem['rss_n_mb']} MB at "
            f"{mem['viewers']} idle viewers: **{mem['kb_per_viewer']} KB per viewer** "
            f"({mem['note']}).",
            "",
        ]
    lines += ["## Fan-out", ""]
    lines += _table(
        [
            "viewers",
            "procs",
            "gifts/s offered",
            "senders",
            "acked/sent",
            "events/s",
            "frames/s",
            "B/frame",
            "events/frame",
            "p50 ms",
            "p99 ms",
            "missing",
            "dups",
            "complete",
            "CPU %",
        ],
        [
            [
                s["room_viewers"],
                s["server_processes"],
                s["rate_offered"],
                s["senders"],
                f"{s['gifts_acked']}/{s['gifts_sent']}",
                s["events_per_s"],
                s["frames_per_s"],
                s["frame_bytes_avg"],
                s["events_per_frame"],
                s["latency_ms"]["p50"],
                s["latency_ms"]["p99"],
                s["missing"],
                s["duplicates"],
                f"{s['viewers_complete']}/{s['room_viewers']}",
                _cpu(s["cpu_pct"]),
            ]
            for s in report.get("fanout", [])
            + ([report["two_processes"]["fanout"]["two"]] if report.get("two_processes") else [])
        ],
    )
    lines += ["## Raw ceiling (bare websockets server, same frames, same window)", ""]
    lines += _table(
        [
            "clients",
            "B/frame",
            "events/frame",
            "frames/s",
            "skipped",
            "late ticks",
            "p50 ms",
            "p99 ms",
            "stack frames/s",
            "stack / raw",
            "CPU %",
        ],
        [
            [
                r["clients"],
                r["frame_bytes"],
                r["events_per_frame"],
                r["frames_per_s"],
                r["frames_skipped_by_server"],
                f"{r['late_ticks']}/{r['ticks']}",
                r["latency_ms"]["p50"],
                r["latency_ms"]["p99"],
                r["stack_frames_per_s"],
                r["stack_over_raw"],
                _cpu(r["cpu_pct"]),
            ]
            for r in report.get("raw", [])
        ],
    )
    lines += ["## Gifts", ""]
    gifts = list(report.get("gifts", []))
    if report.get("two_processes"):
        gifts.append(report["two_processes"]["gifts"]["two"])
    lines += _table(
        [
            "run",
            "procs",
            "senders",
            "rooms",
            "offered/s",
            "acked",
            "acked/s",
            "ack p50 ms",
            "ack p99 ms",
            "errors",
            "CPU %",
        ],
        [
            [
                g["label"],
                g["server_processes"],
                g["senders"],
                g["rooms"],
                g["rate_offered"],
                g["gifts_acked"],
                g["acked_per_s"],
                g["ack_ms"]["p50"],
                g["ack_ms"]["p99"],
                g["errors"] or "",
                _cpu(g["cpu_pct"]),
            ]
            for g in gifts
        ],
    )
    for label, prof in report.get("profiles", {}).items():
        lines += [f"## py-spy: {label} ({prof['samples']} samples)", "", "Self:", ""]
        lines += _table(["function", "% of samples"], prof["self"])
        lines += ["Inclusive:", ""]
        lines += _table(["function", "% of samples"], prof["inclusive"])
    lines += ["## Output", "", "```", *printed, "```", ""]
    return "\n".join(lines)


def write_reports(out: Path, report: dict[str, Any], printed: list[str]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    md_path = out / "report.md"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    md_path.write_text(markdown(report, printed))
    return json_path, md_path
