"""Phase 3, the raw ceiling: a bare websockets server (`bench.raw_server`: asyncio, uvloop,
`broadcast()`, encoded once, written to all) sends frames of the size and number of events
the stack's storm wrote, every 20 ms, to as many clients: what the machine's sockets allow
without the stack, and the stack's frames/s as a share of it."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from bench.processes import ChildFailed, LineProcess, fd_limits
from bench.report import percentiles
from bench.session import REPO, BenchSession
from server.embedded import free_port


async def run(b: BenchSession) -> None:
    port = free_port()
    b.raw = LineProcess(
        "raw",
        [
            sys.executable,
            "-m",
            "bench.raw_server",
            "--port",
            str(port),
            "--max-seconds",
            str(b.p.max_seconds),
        ],
        fleet=b.fleet,
        log_path=b.logs / "raw-server.log",
    )
    await b.raw.start(env={**os.environ, "PYTHONPATH": str(REPO)})
    assert b.raw.greeting is not None
    async with asyncio.timeout(30):
        if await b.raw.greeting is None:
            raise ChildFailed(f"the raw server exited at start, see {b.raw.log_path}")
    soft, hard = fd_limits(b.raw.pid)
    b.report["conditions"]["fd_limit"]["raw"] = {"soft": soft, "hard": hard}
    b.say(
        "RAW CEILING: bare websockets server (asyncio, uvloop, broadcast(): encoded once, "
        f"written to all; fd limit {soft}/{hard}), same frames, same window, same clients"
    )
    b.report["raw"] = []
    for viewers in b.p.fanout_viewers:
        steps = [
            s
            for s in b.report["fanout"]
            if s["room_viewers"] >= viewers * 0.9 and s["room_viewers"] <= viewers
        ]
        stack = max(steps, key=lambda s: s["rate_offered"]) if steps else None
        frame_bytes = stack["frame_bytes_avg"] if stack and stack["frames"] else 2000
        per_frame = stack["events_per_frame"] if stack and stack["frames"] else 10
        group = f"raw-{viewers}"
        connected = await b.connect_viewers(group, "", viewers, ports=[port], path="/")
        await b.on_clients("mark", timeout=10, group=group)
        cpu = b.cpu_watch({"raw": [b.raw.pid]})
        start_at = time.monotonic() + 0.2
        result = await b.raw.call(
            "broadcast",
            timeout=b.left(b.p.step_seconds + 30),
            frame_bytes=frame_bytes,
            events_per_frame=max(1, round(per_frame)),
            window_ms=20,
            duration=b.p.step_seconds,
            start_at=start_at,
            skip_bytes=64 * 1024,
        )
        drained = await b.on_clients(
            "drain",
            timeout=b.p.drain_timeout_s + 30,
            group=group,
            final_seq=int(result["last_seq"]),
            timeout_s=b.p.drain_timeout_s,
        )
        usage = b.cpu_summary(cpu.stop())
        timed = await b.on_clients("latency", timeout=60, group=group)
        await b.close_group(group)
        latencies = [x for reply in timed for x in reply["latency_ms"]]
        frames = sum(d["frames"] for d in drained)
        events = sum(d["events"] for d in drained)
        lasts = [d["last_at"] for d in drained if d["last_at"]]
        span = max(1e-6, (max(lasts) if lasts else start_at + b.p.step_seconds) - start_at)
        raw_fps = frames / span
        stack_fps = stack["frames_per_s"] if stack else 0
        entry = {
            "clients": connected["connected"],
            "frame_bytes": result["frame_bytes"],
            "events_per_frame": max(1, round(per_frame)),
            "window_ms": 20,
            "duration_s": b.p.step_seconds,
            "ticks": result["ticks"],
            "late_ticks": result["late_ticks"],
            "frames_written_by_server": result["frames_written"],
            "frames_skipped_by_server": result["skipped"],
            "frames_received": frames,
            "frames_per_s": round(raw_fps),
            "events_per_s": round(events / span),
            "missing": sum(d["missing"] for d in drained),
            "latency_ms": percentiles(latencies),
            "cpu_pct": usage,
            "stack_step": (
                f"{stack['room_viewers']} viewers, {stack['rate_offered']} gifts/s"
                if stack
                else None
            ),
            "stack_frames_per_s": stack_fps,
            "stack_over_raw": round(stack_fps / raw_fps, 3) if raw_fps else None,
        }
        b.report["raw"].append(entry)
        lat = entry["latency_ms"]
        b.say(
            f"  {entry['clients']} clients, {entry['frame_bytes']} B frames of "
            f"{entry['events_per_frame']} events every 20 ms for {b.p.step_seconds:g} s: "
            f"{entry['frames_per_s']} frames/s received ({result['frames_written']} written,"
            f" {result['skipped']} skipped as the client was behind, "
            f"{result['late_ticks']}/{result['ticks']} ticks late), missing "
            f"{entry['missing']}; latency p50 {lat['p50']} ms p99 {lat['p99']} ms"
        )
        b.say("        " + b.cpu_line(usage))
        if stack:
            b.say(
                f"        giftstream stack at {entry['stack_step']}: {stack_fps} frames/s "
                f"= {entry['stack_over_raw']} x the raw ceiling"
            )
    await b.raw.stop()
    b.raw = None
    b.say()
