"""Phase 5, two processes: the largest fan-out step and the largest closed-loop sender
count, split over two `python -m server` processes sharing the Redis, against the same
on one process."""

from __future__ import annotations

import os

from bench.fanout import fanout_step
from bench.gifts import gift_run
from bench.processes import ServerProcess, fd_limits
from bench.session import BenchSession


async def run(b: BenchSession) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_CLUSTER_URLS", "PROMETHEUS_MULTIPROC_DIR") and not k.startswith("GS_")
    }
    second = ServerProcess("server-b", env={**env, **b.server_env}, fleet=b.fleet, log_dir=b.logs)
    b.servers.append(second)
    await second.start()
    soft, hard = fd_limits(second.pid)
    b.report["conditions"]["fd_limit"]["server-b"] = {"soft": soft, "hard": hard}
    ports = [s.port for s in b.servers]
    viewers = max(b.p.fanout_viewers)
    rate = max(b.p.fanout_rates)
    b.say(
        f"TWO PROCESSES: two `python -m server` processes (ports {ports[0]}, {ports[1]}) "
        f"sharing the Redis (fd limit {soft}/{hard}); viewers and senders split evenly "
        "between them"
    )
    room_id = await b.create_room("two processes")
    connected = await b.connect_viewers("two", room_id, viewers, ports=ports)
    step = await fanout_step(
        b,
        group="two",
        room_id=room_id,
        viewers=connected["connected"],
        rate=rate,
        ports=ports,
        label="two-fanout",
    )
    await b.close_group("two")
    n = max(b.p.gift_senders)
    gifts = await gift_run(b, label=f"two-closed-{n}", n=n, mode="closed", rate=None, ports=ports)
    await b.close_group(f"gifts-two-closed-{n}")
    one_fanout = next(
        (
            s
            for s in b.report["fanout"]
            if s["rate_offered"] == rate and s["room_viewers"] >= viewers * 0.9
        ),
        None,
    )
    one_gifts = next((g for g in b.report["gifts"] if g["label"] == f"closed-{n}"), None)
    b.report["two_processes"] = {
        "fanout": {"one": one_fanout, "two": step},
        "gifts": {"one": one_gifts, "two": gifts},
    }
    if one_fanout and one_gifts:
        b.say(
            f"  one process -> two: fan-out {one_fanout['events_per_s']} -> "
            f"{step['events_per_s']} events/s, p99 {one_fanout['latency_ms']['p99']} -> "
            f"{step['latency_ms']['p99']} ms; gifts {one_gifts['acked_per_s']} -> "
            f"{gifts['acked_per_s']} acked/s, ack p99 {one_gifts['ack_ms']['p99']} -> "
            f"{gifts['ack_ms']['p99']} ms"
        )
    b.say()
