"""Several server hosts in one room, on a Redis Cluster, with faults between a host and
Redis.

    flock /work/coord/heavy.lock python -m scale.hosts [--viewers-per-host 100]
        [--senders-per-host 5] [--seconds 20] [--rtt-ms 200] [--out report.md]

Builds, in network namespaces of its own (`scale.netns`): a Redis Cluster of three
primaries and three replicas, and three giftstream hosts, each reaching Redis over its own
link; this process plays the clients, watchers and senders of one room spread over all
hosts. Then, one phase after another:

1. compare: the same gift storm through one host, then spread over three (gifts/s, ack
   and broadcast latency);
2. storm: every event reaches every watcher exactly once and in order, the room's viewer
   count is the sum over hosts, and the audit holds;
3. partition: host 2's link to Redis goes down mid-load, then comes back: what its
   clients were told, whether anything acked was lost, whether it serves again;
4. slow link: host 3's link to Redis gets an added round-trip time: the ack and
   broadcast latency of every host, before and during.

Prints each phase's conditions and figures, and every problem found (exit 1 if any).
Everything it made is removed at the end, also on failure or Ctrl-C. The hosts, the
Redis nodes and the clients all share this machine's cores.

The same phases, shorter, run as a test (`tests/test_cluster_hosts.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from scale.cluster import LocalCluster
from scale.crowd import Sender, Watcher, percentile, sign_up
from scale.netns import HostNetwork
from server.child import ServerProcess

SERVER_PORT = 8000
REDIS_BASE_PORT = 7001


@dataclass
class Rig:
    """The namespaces, the cluster and the hosts of one run."""

    net: HostNetwork
    cluster: LocalCluster
    servers: list[ServerProcess]
    folder: Path

    @property
    def ws_urls(self) -> list[str]:
        return [server.ws_url for server in self.servers]

    @property
    def http_urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def audit(self) -> tuple[bool, str]:
        """`python -m server.audit` on the cluster (from this namespace)."""
        env = {**os.environ, "REDIS_URL": "", "REDIS_CLUSTER_URLS": self.cluster.urls_setting}
        result = subprocess.run(
            [sys.executable, "-m", "server.audit"], env=env, capture_output=True, timeout=120
        )
        out = (result.stdout + result.stderr).decode(errors="replace")
        return result.returncode == 0, out


@contextlib.contextmanager
def rig(
    folder: Path,
    *,
    hosts: int = 3,
    slowable: tuple[int, ...] = (),
    server_env: dict[str, str] | None = None,
) -> Iterator[Rig]:
    """Build it all; remove it all on the way out (also on failure)."""
    with HostNetwork(hosts=hosts, slowable=slowable) as net:
        cluster = LocalCluster(
            folder / "redis",
            primaries=3,
            replicas=1,
            host=net.redis_ip,
            netns=net.redis_ns,
            base_port=REDIS_BASE_PORT,
            appendonly=True,
        )
        with cluster:
            secret = secrets.token_urlsafe(32)
            servers = [
                ServerProcess(
                    env={
                        "REDIS_URL": "",
                        "REDIS_CLUSTER_URLS": cluster.urls_setting,
                        "GS_TOKEN_SECRET": secret,
                        "GS_DATA_DIR": str(folder / f"host{host.index}"),
                        "GS_PRESENCE_TTL_S": "3",
                        "GS_SWEEP_INTERVAL_S": "0.5",
                        "GS_SWEEP_MIN_AGE_MS": "1000",
                        # A host cut off from Redis closes its viewers this soon after it
                        # finds out (its subscribe connections answer no PING for 5 s).
                        "GS_FEED_LOST_CLOSE_S": "2",
                        **(server_env or {}),
                    },
                    host=host.front_ip,
                    port=SERVER_PORT,
                    launcher=("ip", "netns", "exec", host.netns),
                    log_path=folder / f"host{host.index}.log",
                )
                for host in net.hosts
            ]
            try:
                with ThreadPoolExecutor(len(servers)) as pool:
                    for started in pool.map(lambda s: s.start(timeout_s=60), servers):
                        del started
                yield Rig(net, cluster, servers, folder)
            finally:
                for server in servers:
                    server.stop()


# --- the room and its crowd ----------------------------------------------------------------


class Deployment(Protocol):
    """Where the clients go: each host's HTTP and WebSocket base URLs."""

    @property
    def http_urls(self) -> list[str]: ...

    @property
    def ws_urls(self) -> list[str]: ...


@dataclass
class Hosts:
    """Servers reached directly (no namespaces): a `Deployment`."""

    servers: list[ServerProcess]

    @property
    def ws_urls(self) -> list[str]:
        return [server.ws_url for server in self.servers]

    @property
    def http_urls(self) -> list[str]:
        return [server.url for server in self.servers]


@dataclass
class Crowd:
    room_id: str
    watchers: list[Watcher]
    senders: list[Sender]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    start_coins: dict[str, int] = field(default_factory=dict)

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        for sender in self.senders:
            with contextlib.suppress(Exception):
                await sender.close()

    def watchers_on(self, host: int) -> list[Watcher]:
        return [w for w in self.watchers if w.home == host]

    def senders_on(self, host: int) -> list[Sender]:
        return [s for s in self.senders if s.home == host]


async def gather_crowd(
    rig: Deployment, *, watchers_per_host: int, senders_per_host: int, package: str = "p10000"
) -> Crowd:
    """A new live room, and watchers and senders spread over every host (signed up
    through host 1), all connected when this returns."""
    hosts = len(rig.http_urls)
    async with httpx.AsyncClient(base_url=rig.http_urls[0], timeout=30) as http:
        _, creator_token = await sign_up(http, "Creator", package=None)
        r = await http.post(
            "/api/rooms",
            json={"title": "many hosts"},
            headers={"Authorization": f"Bearer {creator_token}"},
        )
        r.raise_for_status()
        room_id = str(r.json()["room_id"])
        accounts = await asyncio.gather(
            *(sign_up(http, f"Fan{i}", package=package) for i in range(senders_per_host * hosts))
        )
    watchers = [
        Watcher(rig.ws_urls, room_id, home=host)
        for host in range(hosts)
        for _ in range(watchers_per_host)
    ]
    senders = [
        Sender(rig.ws_urls, room_id, home=i % hosts, user_id=user_id, token=token)
        for i, (user_id, token) in enumerate(accounts)
    ]
    crowd = Crowd(room_id, watchers, senders)
    for watcher in watchers:
        crowd.tasks.append(asyncio.create_task(watcher.run(crowd.stop)))
    async with asyncio.timeout(60):
        for watcher in watchers:
            await watcher.ready.wait()
        for sender in senders:
            await sender._connection()
    coins = await wallet_coins(rig, senders)
    crowd.start_coins = coins
    return crowd


async def wallet_coins(rig: Deployment, senders: list[Sender]) -> dict[str, int]:
    coins = {}
    async with httpx.AsyncClient(base_url=rig.http_urls[0], timeout=30) as http:
        for sender in senders:
            r = await http.get("/api/wallet", headers={"Authorization": f"Bearer {sender.token}"})
            r.raise_for_status()
            coins[sender.user_id] = int(r.json()["coins"])
    return coins


async def room_state(rig: Deployment, room_id: str, host: int = 0) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=rig.http_urls[host], timeout=30) as http:
        r = await http.get(f"/api/rooms/{room_id}")
        r.raise_for_status()
        return dict(r.json())


async def settle(rig: Deployment, crowd: Crowd, *, timeout_s: float = 60) -> tuple[int, list[str]]:
    """Wait until every watcher has the room's last event (or the timeout); the last seq
    and what each watcher got wrong."""
    last = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while True:
                last = int((await room_state(rig, crowd.room_id))["seq"])
                if all(w.last >= last for w in crowd.watchers):
                    break
                await asyncio.sleep(0.2)
    problems = [p for w in crowd.watchers for p in w.problems(last)]
    return last, problems


async def money_problems(rig: Deployment, crowd: Crowd) -> list[str]:
    """Nothing acked lost, nothing charged twice: each sender's coins went down by its
    acked gifts exactly (1 coin each), and every watcher saw each acked gift once."""
    problems = []
    coins = await wallet_coins(rig, crowd.senders)
    for sender in crowd.senders:
        acked = len(sender.acked)
        spent = crowd.start_coins[sender.user_id] - coins[sender.user_id]
        if spent != acked:
            problems.append(f"sender {sender.user_id}: {acked} gifts acked, {spent} coins spent")
        for watcher in crowd.watchers:
            shown = watcher.gifts_from.get(sender.user_id, 0)
            if shown != acked:
                problems.append(
                    f"sender {sender.user_id}: {acked} acked, {shown} shown to a watcher"
                    f" of host {watcher.home + 1}"
                )
                break
    return problems


async def viewer_count_problems(
    rig: Deployment, crowd: Crowd, *, timeout_s: float = 20
) -> list[str]:
    """The room's viewer count, asked of every host, is every socket of every host."""
    expected = len(crowd.watchers) + len(crowd.senders)
    seen: list[int] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while True:
                seen = [
                    int((await room_state(rig, crowd.room_id, host))["viewers"])
                    for host in range(len(rig.http_urls))
                ]
                if all(count == expected for count in seen):
                    return []
                await asyncio.sleep(0.3)
    return [f"viewer count {seen} by host, expected {expected} on each"]


# --- measurements -------------------------------------------------------------------------


@dataclass
class Latency:
    count: int
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        return cls(len(seconds), percentile(seconds, 50) * 1000, percentile(seconds, 99) * 1000)

    def cell(self) -> str:
        return f"{self.p50_ms:.0f} / {self.p99_ms:.0f}"


def acks_since(senders: list[Sender], marks: dict[int, int], host: int | None) -> list[float]:
    out = []
    for sender in senders:
        for h, seconds in sender.ack_times[marks.get(id(sender), 0) :]:
            if host is None or h == host:
                out.append(seconds)
    return out


def broadcast_since(
    watchers: list[Watcher],
    marks: dict[int, int],
    host: int | None,
    *,
    from_users: set[str] | None = None,
) -> list[float]:
    """Seconds from each gift event's server time to its arrival, for watchers on `host`
    (all when None), of the gifts sent by `from_users` (all when None)."""
    out = []
    for watcher in watchers:
        for sender, ts, arrived, h in watcher.arrivals[marks.get(id(watcher), 0) :]:
            if (host is None or h == host) and (from_users is None or sender in from_users):
                out.append(max(0.0, (arrived - ts) / 1000))
    return out


def mark(crowd: Crowd) -> dict[int, int]:
    marks = {id(s): len(s.ack_times) for s in crowd.senders}
    marks.update({id(w): len(w.arrivals) for w in crowd.watchers})
    return marks


async def storm(senders: list[Sender], *, seconds: float, interval_s: float) -> int:
    """Every sender sends gifts back to back (`interval_s` apart at least) for `seconds`;
    each gift is retried until acked. Returns how many were acked."""
    deadline = time.monotonic() + seconds
    before = sum(len(s.acked) for s in senders)

    async def one(sender: Sender) -> None:
        while time.monotonic() < deadline:
            await sender.send_gifts(1, interval_s=interval_s)

    async with asyncio.TaskGroup() as tg:
        for sender in senders:
            tg.create_task(one(sender))
    return sum(len(s.acked) for s in senders) - before


# --- the phases ---------------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def say(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def problem(self, what: str) -> None:
        self.problems.append(what)
        self.say(f"PROBLEM: {what}")


async def phase_compare(
    rig: Rig, report: Report, *, viewers: int, senders: int, seconds: float
) -> None:
    """The same storm through one host and spread over all of them."""
    report.say(f"## compare: {senders} senders, {viewers} watchers, {seconds:g} s each")
    report.say(
        "| clients on | gifts/s | ack p50 / p99 ms | broadcast p50 / p99 ms"
        " | CPU of the clients' process |"
    )
    report.say("| --- | --- | --- | --- | --- |")
    hosts = len(rig.servers)
    for spread in (1, hosts):
        per_host_w = max(1, viewers // spread)
        per_host_s = max(1, senders // spread)
        narrowed = Rig(rig.net, rig.cluster, rig.servers[:spread], rig.folder)
        crowd = await gather_crowd(
            narrowed, watchers_per_host=per_host_w, senders_per_host=per_host_s
        )
        try:
            marks = mark(crowd)
            started = time.perf_counter()
            cpu = time.process_time()
            acked = await storm(crowd.senders, seconds=seconds, interval_s=0)
            elapsed = time.perf_counter() - started
            client_cpu = (time.process_time() - cpu) / elapsed
            last, problems = await settle(narrowed, crowd)
            for p in problems:
                report.problem(f"compare {spread} host(s): {p}")
            acks = Latency.of(acks_since(crowd.senders, marks, None))
            shown = Latency.of(broadcast_since(crowd.watchers, marks, None))
            report.say(
                f"| {spread} host{'s' if spread > 1 else ''} | {acked / elapsed:.0f}"
                f" | {acks.cell()} | {shown.cell()} | {client_cpu:.0%} of a core |"
            )
            report.facts[f"compare_{spread}"] = {
                "gifts_per_s": acked / elapsed,
                "client_cpu": client_cpu,
                "ack": acks,
                "broadcast": shown,
            }
        finally:
            await crowd.close()
    report.say()


async def phase_storm(rig: Rig, crowd: Crowd, report: Report, *, gifts: int) -> None:
    report.say(f"## storm: {len(crowd.senders)} senders x {gifts} gifts, "
               f"{len(crowd.watchers)} watchers over {len(rig.servers)} hosts")  # fmt: skip
    async with asyncio.TaskGroup() as tg:
        for sender in crowd.senders:
            tg.create_task(sender.send_gifts(gifts))
    last, problems = await settle(rig, crowd)
    for p in problems:
        report.problem(f"storm: {p}")
    for p in await money_problems(rig, crowd):
        report.problem(f"storm: {p}")
    for p in await viewer_count_problems(rig, crowd):
        report.problem(f"storm: {p}")
    report.say(f"events 1..{last}: every watcher had each once, in order"
               if not problems else f"events 1..{last}: see problems")  # fmt: skip
    report.facts["storm_last_seq"] = last
    report.say()


async def phase_partition(
    rig: Rig, crowd: Crowd, report: Report, *, before_s: float, cut_s: float, after_s: float
) -> None:
    host = rig.net.hosts[1]
    victims_w = crowd.watchers_on(1)
    victims_s = crowd.senders_on(1)
    closes_before = [len(w.closes) for w in victims_w]
    refusals_before = [dict(s.refusals) for s in victims_s]
    moves_before = [len(s.moves) for s in victims_s]
    report.say(f"## partition: host 2's link to Redis down for {cut_s:g} s under load")

    async def cut() -> None:
        await asyncio.sleep(before_s)
        rig.net.partition(host)
        report.say(f"host 2 cut off at +{before_s:g} s")
        await asyncio.sleep(cut_s)
        rig.net.heal(host)
        report.say(f"host 2 healed at +{before_s + cut_s:g} s")

    async with asyncio.TaskGroup() as tg:
        tg.create_task(cut())
        tg.create_task(storm(crowd.senders, seconds=before_s + cut_s + after_s, interval_s=0.1))
    closed = [
        code for w, n in zip(victims_w, closes_before, strict=True) for _, code in w.closes[n:]
    ]
    unavailable = sum(
        s.refusals.get("unavailable", 0) - before.get("unavailable", 0)
        for s, before in zip(victims_s, refusals_before, strict=True)
    )
    moved = [why for s, n in zip(victims_s, moves_before, strict=True) for _, why in s.moves[n:]]
    internal = sum(s.refusals.get("internal", 0) for s in crowd.senders)
    if internal:
        report.problem(f"partition: {internal} gifts answered `internal` (not `unavailable`)")
    report.say(
        f"host 2's watchers: {len(closed)} closes (codes {sorted(set(map(str, closed)))});"
        f" its senders: {unavailable} 'unavailable' answers, {len(moved)} moves to another"
        f" host ({sorted(set(moved))})"
    )
    report.facts["partition"] = {
        "watcher_closes": closed,
        "unavailable": unavailable,
        "sender_moves": moved,
    }
    last, problems = await settle(rig, crowd)
    for p in problems:
        report.problem(f"partition: {p}")
    for p in await money_problems(rig, crowd):
        report.problem(f"partition: {p}")
    # Serves again: a new watcher and a new sender on host 2.
    newcomer = Watcher(rig.ws_urls, crowd.room_id, home=1)
    stop = asyncio.Event()
    task = asyncio.create_task(newcomer.run(stop))
    fresh: Sender | None = None
    try:
        async with asyncio.timeout(60):
            await newcomer.ready.wait()
            async with httpx.AsyncClient(base_url=rig.http_urls[1], timeout=30) as http:
                user_id, token = await sign_up(http, "AfterHeal", package="p100")
            fresh = Sender(rig.ws_urls, crowd.room_id, home=1, user_id=user_id, token=token)
            await fresh.gift()
            served = newcomer.connected_to == 1 and fresh.ack_times[-1][0] == 1
            while not newcomer.gifts_from.get(user_id):
                await asyncio.sleep(0.05)
        report.say(f"after healing, host 2 serves again: {'yes' if served else 'NO'}")
        if not served:
            report.problem("partition: host 2 did not serve again after healing")
        report.facts["partition"]["serves_again"] = served
    finally:
        stop.set()
        await task
        if fresh is not None:
            await fresh.close()
    report.say(f"events 1..{last}: every watcher had each once, in order"
               if not problems else "")  # fmt: skip
    report.say()


async def phase_slow(
    rig: Rig, crowd: Crowd, report: Report, *, rtt_ms: float, seconds: float
) -> None:
    """Host 3's link to Redis gets `rtt_ms` more round trip: the other hosts' acks and
    broadcasts are not held back by it."""
    hosts = len(rig.servers)
    slow = rig.net.hosts[-1]
    for sender in crowd.senders:
        await sender.go_home()
    for watcher in crowd.watchers:
        await watcher.go_home()
    async with asyncio.timeout(30):
        while any(w.connected_to != w.home for w in crowd.watchers):
            await asyncio.sleep(0.05)
    others = {s.user_id for s in crowd.senders if s.home != hosts - 1}
    report.say(
        f"## slow link: host {slow.index}'s round trip to Redis +{rtt_ms:g} ms"
        f" ({rig.net.slow_by}); {seconds:g} s of storm before, then during"
    )
    table: dict[str, list[str]] = {}
    for label, added in (("before", 0.0), ("during", rtt_ms)):
        rig.net.slow(slow, rtt_ms=added)
        marks = mark(crowd)
        await storm(crowd.senders, seconds=seconds, interval_s=0.05)
        for host in range(hosts):
            acks = Latency.of(acks_since(crowd.senders, marks, host))
            shown = Latency.of(broadcast_since(crowd.watchers, marks, host, from_users=others))
            table.setdefault(f"host {host + 1}", []).extend([acks.cell(), shown.cell()])
            report.facts[f"slow_{label}_host{host + 1}"] = {"ack": acks, "broadcast": shown}
    report.say(
        "| host | ack p50/p99 ms before | broadcast p50/p99 ms before | ack during"
        " | broadcast during |"
    )
    report.say("| --- | --- | --- | --- | --- |")
    for name, cells in table.items():
        report.say(f"| {name} | " + " | ".join(cells) + " |")
    report.say(
        f"(ack: by the sender's host; broadcast: by the watcher's host, of gifts sent"
        f" through hosts other than host {slow.index})"
    )
    # Behaviour, not speed: while one gift through the slowed host waits on its link,
    # every other host acks a handful of gifts.
    rig.net.slow(slow, rtt_ms=max(rtt_ms, 2000))
    slowed_sender = crowd.senders_on(hosts - 1)[0]
    waiting = asyncio.create_task(slowed_sender.gift())
    try:
        async with asyncio.TaskGroup() as tg:
            for host in range(hosts - 1):
                tg.create_task(crowd.senders_on(host)[0].send_gifts(5))
        held_back = waiting.done()
        await waiting
    finally:
        rig.net.slow(slow, rtt_ms=0)
    report.say(
        "while one gift waited on the slowed link (+2 s), every other host acked 5 gifts: "
        + ("no (PROBLEM)" if held_back else "yes")
    )
    if held_back:
        report.problem("slow: the other hosts were held back by the slowed one")
    report.facts["slow_others_not_held"] = not held_back
    last, problems = await settle(rig, crowd)
    for p in problems:
        report.problem(f"slow: {p}")
    for p in await money_problems(rig, crowd):
        report.problem(f"slow: {p}")
    report.say()


async def run(args: argparse.Namespace) -> Report:
    report = Report()
    report.say("# giftstream on several hosts")
    report.say(
        f"{platform.node()}, {os.cpu_count()} cores shared by every host, Redis node and"
        f" client of this run (and whatever else runs here); Python {platform.python_version()}"
    )
    folder = Path(tempfile.mkdtemp(prefix="gs-cluster-hosts-"))
    env = {"GS_GIFT_RATE_PER_S": "1000", "GS_GIFT_BURST": "1000"}
    with rig(folder, slowable=(3,), server_env=env) as built:
        report.say(
            f"Redis Cluster: 3 primaries + 3 replicas ({built.cluster.binary}, AOF everysec);"
            f" 3 hosts in network namespaces; link delay by {built.net.slow_by}"
        )
        report.say()
        phases = set(args.phases.split(","))
        if "compare" in phases:
            await phase_compare(
                built, report, viewers=args.viewers_per_host * 3,
                senders=args.senders_per_host * 3, seconds=args.seconds,
            )  # fmt: skip
        crowd = await gather_crowd(
            built, watchers_per_host=args.viewers_per_host, senders_per_host=args.senders_per_host
        )
        try:
            if "storm" in phases:
                await phase_storm(built, crowd, report, gifts=args.gifts)
            if "partition" in phases:
                await phase_partition(
                    built, crowd, report, before_s=3, cut_s=args.cut_seconds, after_s=5
                )
            if "slow" in phases:
                await phase_slow(built, crowd, report, rtt_ms=args.rtt_ms, seconds=args.seconds)
        finally:
            await crowd.close()
        await asyncio.sleep(2)  # the sweeper's age threshold, so nothing is in flight
        ok, out = built.audit()
        report.say("## audit")
        report.say(out.strip())
        if not ok:
            report.problem("the audit found a breach")
    report.say()
    report.say(f"{len(report.problems)} problems" if report.problems else "no problems")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scale.hosts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--viewers-per-host", type=int, default=100)
    parser.add_argument("--senders-per-host", type=int, default=5)
    parser.add_argument("--gifts", type=int, default=50, help="per sender, storm phase")
    parser.add_argument("--seconds", type=float, default=15.0, help="each measured storm")
    parser.add_argument("--cut-seconds", type=float, default=10.0)
    parser.add_argument("--rtt-ms", type=float, default=200.0)
    parser.add_argument("--phases", default="compare,storm,partition,slow")
    parser.add_argument("--out", type=Path, default=None, help="write the report here too")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this")
    args = parser.parse_args(argv)

    async def bounded() -> Report:
        async with asyncio.timeout(args.timeout):
            return await run(args)

    report = asyncio.run(bounded())
    if args.out is not None:
        args.out.write_text("\n".join(report.lines) + "\n")
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
