"""Phase 1, memory: the server warmed up (imports, caches, a first subscription and a few
gifts), its RSS at 0 viewers, then with the first fan-out room's viewers connected and
idle: the bytes one idle viewer costs. The room stays connected for `bench.fanout`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.processes import rss_bytes
from bench.session import BenchSession


@dataclass(frozen=True)
class IdleRoom:
    """A fan-out room whose viewers are connected (and were idle while measured)."""

    room_id: str
    group: str
    viewers: int
    connected: dict[str, Any]


async def warm_up(b: BenchSession) -> None:
    """Imports, caches, a first subscription, a few gifts: so the idle baseline is the
    server as it runs, not as it starts."""
    port = b.servers[0].port
    warm_room = await b.create_room("warm-up")
    await b.connect_viewers("warm", warm_room, 20, ports=[port])
    warm = b.fanout_senders[-1:]
    await b.connect_senders("warm-s", [(a, warm_room, port) for a in warm])
    await b.on_clients(
        "send",
        timeout=30,
        group="warm-s",
        mode="open",
        max_in_flight=b.p.max_in_flight,
        rate=10,
        duration=1.0,
        start_at=time.monotonic() + 0.1,
        settle_timeout=5,
        timeout_s=5,
    )
    await b.close_group("warm")
    await b.close_group("warm-s")
    await asyncio.sleep(1.0)


async def run(b: BenchSession) -> IdleRoom:
    await warm_up(b)
    b.say()
    port = b.servers[0].port
    server_pid = b.servers[0].pid
    viewers = b.p.fanout_viewers[0]
    room_id = await b.create_room(f"fan-out {viewers}")
    group = f"fanout-{viewers}"
    rss_0 = rss_bytes(server_pid)
    idle_0 = await b.idle_cpu()
    b.say(
        f"MEMORY: server RSS (process tree) at 0 viewers: {rss_0 / 1e6:.1f} MB; "
        f"idle server CPU {idle_0:.1f}% of a core"
    )
    connected = await b.connect_viewers(group, room_id, viewers, ports=[port])
    await asyncio.sleep(1.0)
    idle_n = await b.idle_cpu()
    rss_n = rss_bytes(server_pid)
    n = connected["connected"]
    per = (rss_n - rss_0) / max(1, n) / 1000
    b.report["memory"] = {
        "viewers": n,
        "rss_0_mb": round(rss_0 / 1e6, 2),
        "rss_n_mb": round(rss_n / 1e6, 2),
        "kb_per_viewer": round(per, 2),
        "server_processes": 1,
        "idle_server_cpu_pct_0": round(idle_0, 1),
        "idle_server_cpu_pct_n": round(idle_n, 1),
        "note": "RSS of the server's process tree; KB = 1,000 bytes; viewers "
        "anonymous, idle for 3 s after connecting",
    }
    b.say(
        f"MEMORY: server RSS at {n} idle viewers: {rss_n / 1e6:.1f} MB -> "
        f"{per:.1f} KB per idle viewer; idle server CPU {idle_n:.1f}% of a core"
    )
    b.say()
    return IdleRoom(room_id, group, viewers, connected)
