"""Phase 4, gifts: closed-loop senders (each sends its next gift once the last is
answered) over many rooms at rising counts, then an open-loop offered rate; acked gifts
per second, ack latency, and the server's CPU per acked gift."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.report import percentiles
from bench.session import BenchSession


async def gift_run(
    b: BenchSession,
    *,
    label: str,
    n: int,
    mode: str,
    rate: float | None,
    ports: list[int],
    group: str | None = None,
) -> dict[str, Any]:
    p = b.p
    rooms = b.gift_rooms
    if group is None:
        group = f"gifts-{label}"
        specs = [
            (a, rooms[i % len(rooms)], ports[i % len(ports)])
            for i, a in enumerate(b.gift_senders[:n])
        ]
        await b.connect_senders(group, specs)
    cpu = b.cpu_watch()
    start_at = time.monotonic() + 0.2
    spy = b.start_py_spy(label, p.gift_seconds) if b.py_spy and n >= 500 else None
    args: dict[str, Any] = {"mode": mode, "start_at": start_at, "duration": p.gift_seconds}
    if mode == "open":
        assert rate is not None
        per = rate / n
        args["rate"] = per
        args["max_in_flight"] = p.max_in_flight
        args["offsets"] = {a.user_id: (i / n) / per for i, a in enumerate(b.gift_senders[:n])}
    replies = await b.on_clients(
        "send",
        timeout=p.gift_seconds + p.drain_timeout_s + 30,
        group=group,
        timeout_s=10,
        settle_timeout=p.drain_timeout_s,
        **args,
    )
    usage = b.cpu_summary(cpu.stop())
    if spy is not None:
        await spy
    senders = [s for r in replies for s in r["senders"]]
    acks = [x for r in replies for x in r["ack_ms"]]
    errors: Counter[str] = Counter()
    for r in replies:
        errors.update(r["errors"])
    acked = sum(s["acked"] for s in senders)
    gifts_sent = sum(s["sent"] for s in senders)
    end = max(r["settled_at"] if mode == "open" else r["finished_at"] for r in replies)
    span = max(1e-6, end - start_at)
    result: dict[str, Any] = {
        "label": label,
        "mode": mode,
        "senders": len(senders),
        "rooms": min(n, len(rooms)),
        "server_processes": len(ports),
        "rate_offered": rate,
        "duration_s": p.gift_seconds,
        "gifts_sent": gifts_sent,
        "gifts_held_back": sum(s["held_back"] for s in senders),
        "gifts_acked": acked,
        "errors": dict(errors),
        "unanswered": sum(s["unanswered"] for s in senders),
        "acked_per_s": round(acked / span),
        "acked_per_s_per_process": round(acked / span / len(ports)),
        "ack_ms": percentiles(acks),
        "cpu_pct": usage,
        # The server's CPU over the run (all of it: acks, steps 2-4, fan-out to the
        # senders' rooms) per acked gift.
        "server_cpu_us_per_gift": round(usage["server"] / 100 * cpu.seconds * 1e6 / acked)
        if acked
        else None,
    }
    ack = result["ack_ms"]
    what = (
        f"{n} closed-loop senders"
        if mode == "closed"
        else f"{rate:g} gifts/s offered by {n} senders"
    )
    b.say(
        f"  {what} over {result['rooms']} rooms, {len(ports)} server process"
        f"{'es' if len(ports) > 1 else ''}, {p.gift_seconds:g} s: {acked} acked "
        f"({result['acked_per_s']}/s), ack p50 {ack['p50']} ms p99 {ack['p99']} ms"
        + (f", errors {dict(errors)}" if errors else "")
        + (f", {result['unanswered']} unanswered" if result["unanswered"] else "")
        + (
            f", {result['gifts_held_back']} held back ({p.max_in_flight} unanswered)"
            if result["gifts_held_back"]
            else ""
        )
    )
    b.say(
        f"        server CPU per acked gift: {result['server_cpu_us_per_gift']} us "
        "(its CPU over the run / gifts acked)"
    )
    b.say("        " + b.cpu_line(usage))
    return result


async def run(b: BenchSession) -> None:
    port = b.servers[0].port
    b.say(
        f"GIFTS: closed-loop senders (next gift once the last is acked), rooms dealt "
        f"round-robin from {len(b.gift_rooms)}, 1 server process"
    )
    runs = []
    for n in b.p.gift_senders:
        keep = n == max(b.p.gift_senders)
        runs.append(
            await gift_run(
                b,
                label=f"closed-{n}",
                n=n,
                mode="closed",
                rate=None,
                ports=[port],
                group=None,
            )
        )
        if not keep:
            await b.close_group(f"gifts-closed-{n}")
    # The open-loop run at the target's rate reuses the largest group's connections.
    n = max(b.p.gift_senders)
    runs.append(
        await gift_run(
            b,
            label=f"open-{b.p.gift_open_rate}",
            n=n,
            mode="open",
            rate=b.p.gift_open_rate,
            ports=[port],
            group=f"gifts-closed-{n}",
        )
    )
    await b.close_group(f"gifts-closed-{n}")
    b.report["gifts"] = runs
    b.say()
