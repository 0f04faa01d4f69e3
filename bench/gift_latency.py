"""Gift latency: from a gift's send to the other viewers' sockets.

    python -m bench.gift_latency [--viewers 50] [--senders 20] [--gifts 3000] [--rate 300]
                                 [--fanout-cpu-share X] [--workers N]

Starts its own embedded Redis and one giftstream server (`python -m server`) on loopback
ports, fills one room with anonymous viewers, and has signed-in senders send gifts (a
1-coin rose each) at a bounded total rate, each sender under the default per-connection
gift limit. Every time is taken in this one process with one clock: a gift's send is
stamped just before its frame is written, its arrival on each viewer's socket just after
that viewer's `recv` returns. Prints the conditions and the median, p90, p99 and maximum
of the delivery latency over every (gift, viewer) pair, of the time until the last viewer
had each gift, and of the ack. Stops everything it started, and gives up after --timeout
seconds in all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.child import ServerProcess
from server.embedded import EmbeddedRedis

APPROVED_CARD = "4242424242424242"


@dataclass
class Run:
    viewers: int
    senders: int
    gifts: int
    rate: float
    fanout_cpu_share: float | None
    workers: int
    # (sender_id, n) -> perf_counter at send / at ack
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)
    acked_at: dict[tuple[str, int], float] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)
    # per viewer: (sender_id, n) -> perf_counter at arrival
    arrived: list[dict[tuple[str, int], float]] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)


def server_for(redis_url: str, data_dir: Path, run: Run) -> ServerProcess:
    env = {
        "REDIS_URL": redis_url,
        "GS_TOKEN_SECRET": secrets.token_urlsafe(32),
        "GS_DATA_DIR": str(data_dir),
        "GS_WORKERS": str(run.workers),
    }
    if run.fanout_cpu_share is not None:
        env["GS_FANOUT_CPU_SHARE"] = str(run.fanout_cpu_share)
    return ServerProcess(env=env, log_path=data_dir / "server.log")


async def sign_up(http: httpx.AsyncClient, name: str, *, coins: bool) -> tuple[str, str]:
    r = await http.post(
        "/api/users", json={"name": name, "birthdate": "1990-01-01", "region": "US"}
    )
    r.raise_for_status()
    user_id, token = r.json()["user_id"], r.json()["token"]
    if coins:
        r = await http.post(
            "/api/wallet/recharge",
            json={
                "package_id": "p10000",
                "card_number": APPROVED_CARD,
                "idempotency_key": secrets.token_hex(8),
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        r.raise_for_status()
    return user_id, token


async def open_socket(ws_url: str, room_id: str, token: str | None = None) -> ClientConnection:
    url = f"{ws_url}/ws/rooms/{room_id}" + (f"?token={token}" if token else "")
    conn = await connect(url, max_queue=None, compression=None)
    welcome = orjson.loads(await conn.recv())
    assert welcome["type"] == "welcome", welcome
    return conn


async def watch(
    conn: ClientConnection, arrived: dict[tuple[str, int], float], run: Run, i: int
) -> None:
    counts: dict[str, int] = defaultdict(int)
    try:
        while True:
            data = await conn.recv()
            now = time.perf_counter()
            run.frames[i] += 1
            frame = orjson.loads(data)
            if frame["type"] != "events":
                continue
            for event in frame["events"]:
                if event["kind"] == "gift":
                    sender = event["from"]["user_id"]
                    arrived[(sender, counts[sender])] = now
                    counts[sender] += 1
    except ConnectionClosed:
        return


async def send_gifts(
    conn: ClientConnection, sender_id: str, count: int, interval: float, offset: float, run: Run
) -> None:
    """`count` gifts, one every `interval` seconds, starting `offset` seconds in. The
    n-th acked gift of a sender is its n-th gift event: gifts of one connection are
    served in order, and a refused one has no event."""
    pending: dict[str, float] = {}
    acked = 0
    done = asyncio.Event()

    async def read_answers() -> None:
        nonlocal acked
        while not (done.is_set() and not pending):
            frame = orjson.loads(await conn.recv())
            now = time.perf_counter()
            if frame["type"] == "ack":
                sent = pending.pop(frame["request_id"])
                run.sent_at[(sender_id, acked)] = sent
                run.acked_at[(sender_id, acked)] = now
                acked += 1
            elif frame["type"] == "error":
                pending.pop(frame["request_id"], None)
                run.refused.append(frame)

    reader = asyncio.create_task(read_answers())
    start = time.perf_counter() + offset
    try:
        for n in range(count):
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request_id = secrets.token_hex(8)
            frame = orjson.dumps(
                {"type": "gift", "request_id": request_id, "gift_id": "rose", "count": 1}
            ).decode()
            pending[request_id] = time.perf_counter()
            await conn.send(frame)
        done.set()
        await reader
    finally:
        reader.cancel()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<34} median {statistics.median(ms):7.2f} ms   p90 {quantile(ms, 0.90):7.2f} ms"
        f"   p99 {quantile(ms, 0.99):7.2f} ms   max {max(ms):7.2f} ms   (n={len(ms)})"
    )


async def measure(run: Run, ws_url: str, http_url: str) -> None:
    async with httpx.AsyncClient(base_url=http_url, timeout=30) as http:
        _, creator_token = await sign_up(http, "Creator", coins=False)
        r = await http.post(
            "/api/rooms",
            json={"title": "latency"},
            headers={"Authorization": f"Bearer {creator_token}"},
        )
        r.raise_for_status()
        room_id = r.json()["room_id"]
        senders = [await sign_up(http, f"Sender{i}", coins=True) for i in range(run.senders)]
    viewer_conns = [await open_socket(ws_url, room_id) for _ in range(run.viewers)]
    sender_conns = [await open_socket(ws_url, room_id, token) for _, token in senders]
    run.arrived = [{} for _ in viewer_conns]
    run.frames = [0 for _ in viewer_conns]
    per_sender = run.gifts // run.senders
    interval = run.senders / run.rate
    watchers = [
        asyncio.create_task(watch(conn, run.arrived[i], run, i))
        for i, conn in enumerate(viewer_conns)
    ]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as tg:
            for i, ((sender_id, _), conn) in enumerate(zip(senders, sender_conns, strict=True)):
                offset = i * interval / run.senders
                tg.create_task(send_gifts(conn, sender_id, per_sender, interval, offset, run))
        sending = time.perf_counter() - started
        expected = set(run.sent_at)
        deadline = time.perf_counter() + 30
        while any(not expected <= set(arrived) for arrived in run.arrived):
            if time.perf_counter() > deadline:
                raise RuntimeError("some viewers never received some gifts")
            await asyncio.sleep(0.05)
    finally:
        for task in watchers:
            task.cancel()
        for conn in [*viewer_conns, *sender_conns]:
            await conn.close()

    delivery = [arrived[key] - sent for key, sent in run.sent_at.items() for arrived in run.arrived]
    last_viewer = [max(a[key] for a in run.arrived) - sent for key, sent in run.sent_at.items()]
    acks = [run.acked_at[key] - run.sent_at[key] for key in run.sent_at]
    print(
        f"conditions: {os.cpu_count()} CPUs ({platform.machine()}, {platform.system()}), "
        f"Python {platform.python_version()}; client, server and Redis on one machine, loopback"
    )
    print(
        f"  1-minute load average {load_before:.2f} before the run, "
        f"{os.getloadavg()[0]:.2f} after (other work on this machine shows here)"
    )
    print(
        f"  server: 1 process x {run.workers} worker(s), fan-out CPU share "
        f"{run.fanout_cpu_share if run.fanout_cpu_share is not None else 'default (0.5)'}, "
        "no per-message compression"
    )
    print(
        f"  one room: {run.viewers} anonymous viewers + {run.senders} senders; "
        f"{len(run.sent_at)} gifts acked ({len(run.refused)} refused) in {sending:.1f} s "
        f"= {len(run.sent_at) / sending:.0f} gifts/s (target {run.rate:.0f}/s)"
    )
    print(
        f"  frames per viewer: {statistics.mean(run.frames):.0f} "
        f"({len(run.sent_at) / statistics.mean(run.frames):.1f} gifts per frame)"
    )
    achieved = len(run.sent_at) / sending
    if achieved < 0.95 * run.rate:
        print(
            f"  WARNING: {achieved:.0f} gifts/s of {run.rate:.0f} asked: the server (or this "
            "machine) did not keep up, so the figures below include queueing"
        )
    print(describe("send -> each viewer's socket", delivery))
    print(describe("send -> the last viewer's socket", last_viewer))
    print(describe("send -> ack", acks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gift_latency", description=__doc__)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--gifts", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=300.0, help="gifts per second in all")
    parser.add_argument("--fanout-cpu-share", type=float, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this")
    args = parser.parse_args(argv)
    if args.rate / args.senders > 20:
        parser.error("keep each sender under the default limit of 20 gifts/s: add senders")
    run = Run(
        viewers=args.viewers,
        senders=args.senders,
        gifts=args.gifts,
        rate=args.rate,
        fanout_cpu_share=args.fanout_cpu_share,
        workers=args.workers,
    )
    with tempfile.TemporaryDirectory(prefix="giftstream-bench-") as tmp:
        data_dir = Path(tmp)
        with EmbeddedRedis(data_dir / "redis") as redis_server:
            with server_for(redis_server.url, data_dir, run) as server:
                measured = measure(run, server.ws_url, server.url)
                asyncio.run(asyncio.wait_for(measured, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
