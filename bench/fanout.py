"""Phase 2, fan-out: per room size, gifts offered at each rate by fresh senders (each at
most `sender_rate` gifts/s); delivery checked for every viewer by seq, latency timed on a
sample, the server's CPU and the event loop's worst lag (`giftstream_loop_lag_max_seconds`,
polled through the step) recorded."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from bench.memory import IdleRoom
from bench.report import percentiles
from bench.session import BenchSession


async def run(b: BenchSession, first: IdleRoom | None) -> None:
    """Every room size's steps; the first size's room is `first` when memory left it
    connected."""
    port = b.servers[0].port
    b.report["fanout"] = []
    for viewers in b.p.fanout_viewers:
        if first is not None and first.viewers == viewers:
            room_id, group, connected = first.room_id, first.group, first.connected
            first = None
        else:
            room_id = await b.create_room(f"fan-out {viewers}")
            group = f"fanout-{viewers}"
            connected = await b.connect_viewers(group, room_id, viewers, ports=[port])
        b.say(
            f"FAN-OUT: one room of {viewers} viewers ({min(b.p.timed_viewers, viewers)} "
            f"timed in full, all checked by seq), 1 server process"
        )
        for rate in b.p.fanout_rates:
            step = await fanout_step(
                b,
                group=group,
                room_id=room_id,
                viewers=connected["connected"],
                rate=rate,
                ports=[port],
                label=f"fanout-{viewers}-{rate}",
            )
            step["connect_seconds"] = connected["seconds"]
            b.report["fanout"].append(step)
        await b.close_group(group)
        b.say()


async def fanout_step(
    b: BenchSession,
    *,
    group: str,
    room_id: str,
    viewers: int,
    rate: int,
    ports: list[int],
    label: str,
) -> dict[str, Any]:
    p = b.p
    n_senders = max(1, math.ceil(rate / p.sender_rate))
    per_sender = rate / n_senders
    accounts, b.fanout_senders = (
        b.fanout_senders[:n_senders],
        b.fanout_senders[n_senders:],
    )
    senders_group = f"{label}-senders"
    await b.connect_senders(
        senders_group, [(a, room_id, ports[i % len(ports)]) for i, a in enumerate(accounts)]
    )
    before = await b.room_state(room_id)
    metrics_before = await b.server_metrics()
    await b.on_clients("mark", timeout=10, group=group)
    # Senders' first gifts spread evenly over one interval, not all at once.
    offsets = {a.user_id: (i / n_senders) / per_sender for i, a in enumerate(accounts)}
    cpu = b.cpu_watch()
    start_at = time.monotonic() + 0.2
    is_storm = rate == max(p.fanout_rates) and viewers >= max(p.fanout_viewers) * 0.9
    spy = b.start_py_spy(label, p.step_seconds) if is_storm else None
    async with b.loop_lag() as loop_lag:
        sent = await b.on_clients(
            "send",
            timeout=p.step_seconds + p.drain_timeout_s + 30,
            group=senders_group,
            mode="open",
            max_in_flight=b.p.max_in_flight,
            rate=per_sender,
            duration=p.step_seconds,
            start_at=start_at,
            offsets=offsets,
            keep_times=True,
            settle_timeout=p.drain_timeout_s,
        )
    after = await b.settled_room(room_id)
    drained = await b.on_clients(
        "drain",
        timeout=p.drain_timeout_s + 30,
        group=group,
        final_seq=int(after["seq"]),
        timeout_s=p.drain_timeout_s,
    )
    usage = b.cpu_summary(cpu.stop())
    metrics_after = await b.server_metrics()
    if spy is not None:
        await spy
    senders = [s for reply in sent for s in reply["senders"]]
    sent_at = {s["user_id"]: s["sent_at"] for s in senders}
    timed = await b.on_clients("latency", timeout=60, group=group, sent_at=sent_at)
    await b.close_group(senders_group)
    latencies = [x for reply in timed for x in reply["latency_ms"]]
    errors: Counter[str] = Counter()
    for reply in sent:
        errors.update(reply["errors"])
    gifts_sent = sum(s["sent"] for s in senders)
    acked = sum(s["acked"] for s in senders)
    debited = sum((s["coins_at_welcome"] or 0) - (s["last_coins"] or 0) for s in senders)
    frames = sum(d["frames"] for d in drained)
    events = sum(d["events"] for d in drained)
    size = sum(d["bytes"] for d in drained)
    lasts = [d["last_at"] for d in drained if d["last_at"]]
    span = max(1e-6, (max(lasts) if lasts else start_at + p.step_seconds) - start_at)
    closed: Counter[str] = Counter()
    for d in drained:
        closed.update(d["closed"])
    server_frames = (
        metrics_after["giftstream_broadcast_frames_total"]
        - metrics_before["giftstream_broadcast_frames_total"]
    )
    step: dict[str, Any] = {
        "room_viewers": viewers,
        "server_processes": len(ports),
        "rate_offered": rate,
        "senders": n_senders,
        "per_sender_rate": round(per_sender, 2),
        "duration_s": p.step_seconds,
        "gifts_offered": round(rate * p.step_seconds),
        "gifts_sent": gifts_sent,
        "gifts_held_back": sum(s["held_back"] for s in senders),
        "gifts_acked": acked,
        "gift_errors": dict(errors),
        "unanswered": sum(s["unanswered"] for s in senders),
        "coins_debited": debited,
        "room_gift_count_delta": int(after["totals"]["gift_count"])
        - int(before["totals"]["gift_count"]),
        # Every event the room published during the step, to every viewer.
        "events_published": int(after["seq"]) - int(before["seq"]),
        "events_expected": (int(after["seq"]) - int(before["seq"])) * viewers,
        "events_delivered": events,
        "events_delivered_to_final_seq": sum(d["events_to_final"] for d in drained),
        "events_per_s": round(events / span),
        "frames": frames,
        "frames_per_s": round(frames / span),
        "server_frames_per_s": round(server_frames / span),
        "frame_bytes_avg": round(size / frames) if frames else 0,
        "events_per_frame": round(events / frames, 2) if frames else 0,
        "delivery_seconds": round(span, 2),
        "latency_ms": {
            **percentiles(latencies),
            "unmatched": sum(int(r["unmatched"]) for r in timed),
        },
        "missing": sum(d["missing"] for d in drained),
        "duplicates": sum(d["duplicates"] for d in drained),
        "viewers_complete": sum(d["complete"] for d in drained),
        "viewers_closed": dict(closed),
        "slow_readers_closed": round(
            metrics_after["giftstream_slow_readers_closed_total"]
            - metrics_before["giftstream_slow_readers_closed_total"]
        ),
        "cpu_pct": usage,
        "loop_lag_max_ms": round(loop_lag[0] * 1000, 1),
    }
    lat = step["latency_ms"]
    b.say(
        f"  {rate:>5} gifts/s offered by {n_senders} senders ({per_sender:.1f}/s each) for "
        f"{p.step_seconds:g} s: sent {gifts_sent}/{step['gifts_offered']}"
        + (
            f" ({step['gifts_held_back']} held back: {p.max_in_flight} unanswered)"
            if step["gifts_held_back"]
            else ""
        )
        + f", acked {acked}"
        + (f", errors {dict(errors)}" if errors else "")
        + (f", {step['unanswered']} unanswered" if step["unanswered"] else "")
        + f", debited {debited} coins, room count +{step['room_gift_count_delta']}"
    )
    late = events - step["events_delivered_to_final_seq"]
    b.say(
        f"        delivered {step['events_delivered_to_final_seq']}/{step['events_expected']}"
        " events up to the room's final seq"
        + (f" (+{late} published after it was read)" if late > 0 else "")
        + f"; {events} events "
        f"({step['events_per_s']}/s) in {frames} frames ({step['frames_per_s']}/s, "
        f"{step['events_per_frame']} events/frame, {step['frame_bytes_avg']} B/frame) "
        f"over {span:.1f} s; missing {step['missing']}, duplicates {step['duplicates']}, "
        f"complete {step['viewers_complete']}/{viewers} viewers"
        + (f", closed {dict(closed)}" if closed else "")
    )
    b.say(
        f"        broadcast latency (send -> viewer receive): p50 {lat['p50']} ms, "
        f"p99 {lat['p99']} ms, max {lat['max']} ms ({lat['samples']} samples"
        + (f", {lat['unmatched']} unmatched" if lat["unmatched"] else "")
        + ")"
    )
    b.say(
        f"        event loop's worst lag during the step: {step['loop_lag_max_ms']} ms "
        "(a callback due every 10 ms, how late it ran)"
    )
    b.say("        " + b.cpu_line(usage))
    return step
