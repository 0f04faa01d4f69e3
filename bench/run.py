"""The bench run: start Redis, the server(s) and the load-client processes, measure each
phase, stop everything.

Phases, in this order (every one bounded in load and time):
1. memory: server RSS at 0 viewers, then with the first fan-out room's viewers idle;
2. fan-out: per room size, gifts offered at each rate by fresh senders (each at most
   `sender_rate` gifts/s); delivery checked for every viewer by seq, latency timed on a
   sample;
3. raw ceiling: a bare websockets server broadcasting frames of the same size and count
   of events, at the same coalescing window, to as many clients;
4. gifts: closed-loop senders over many rooms, then an open-loop offered rate;
5. two processes: the largest fan-out step and the largest sender count, split over
   two server processes sharing the Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.limits import raise_fd_limit
from bench.processes import (
    ChildFailed,
    CpuWatch,
    Fleet,
    LineProcess,
    ServerProcess,
    fd_limits,
    rss_bytes,
    run_to_end,
)
from bench.profiles import Profile
from bench.report import percentiles, summarize_collapsed
from server.embedded import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parent.parent
APPROVED_CARD = "4242424242424242"
CLIENT_SATURATED_PCT = 90.0
# Every gift a storm sender sends has a combo one higher than the last: the bench finds a
# gift event's send time by (sender, combo), so combos must not restart during the run.
COMBO_GAP_MS = 3_600_000
GIFT_RATE_LIMIT = 100_000


@dataclass(frozen=True)
class Account:
    user_id: str
    token: str


def split(n: int, k: int) -> list[int]:
    """`n` as `k` near-equal shares."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Bench:
    def __init__(self, profile: Profile, out: Path, *, fleet: Fleet, py_spy: bool) -> None:
        self.p = profile
        self.out = out
        self.logs = out / "logs"
        self.fleet = fleet
        self.py_spy = py_spy
        self.tmp = Path(tempfile.mkdtemp(prefix="gs-bench-"))
        self.redis: EmbeddedRedis | None = None
        self.servers: list[ServerProcess] = []
        self.clients: list[LineProcess] = []
        self.raw: LineProcess | None = None
        self.http = httpx.AsyncClient(timeout=30.0)
        self.report: dict[str, Any] = {"profile": profile.name}
        self.server_env: dict[str, str] = {}
        self._fanout_senders: list[Account] = []
        self._gift_senders: list[Account] = []
        self._gift_rooms: list[str] = []
        self._deadline = time.monotonic() + profile.max_seconds
        self.printed: list[str] = []

    def say(self, line: str = "") -> None:
        """Print a line of the results (and keep it for the markdown report)."""
        print(line, flush=True)
        self.printed.append(line)

    # --- lifetime ---------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        phases = [
            ("memory and fan-out", self.memory_and_fanout),
            ("raw ceiling", self.raw_ceiling),
            ("gifts", self.gifts),
        ]
        if self.p.two_processes:
            phases.append(("two processes", self.two_processes))
        try:
            await self.setup()
            for name, phase in phases:
                try:
                    await phase()
                except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                    # One phase failing (or running out of time) does not lose the others.
                    message = f"{name}: {type(exc).__name__}: {exc}"
                    self.report.setdefault("errors", []).append(message)
                    self.say(f"  PHASE FAILED: {message}")
                    await self.on_clients("close_all", timeout=30)
        finally:
            await self.teardown()
        self.report["seconds"] = round(time.monotonic() - started, 1)
        return self.report

    async def teardown(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.stop()
        if self.raw is not None:
            with contextlib.suppress(Exception):
                await self.raw.stop()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.stop()
        if self.redis is not None:
            pid = self.redis.pid
            with contextlib.suppress(Exception):
                self.redis.stop()
            if pid is not None:
                self.fleet.discard(pid)
        await self.http.aclose()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def left(self, wanted: float) -> float:
        """A phase's timeout: `wanted`, but never past the run's hard deadline."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 1:
            raise TimeoutError("the run's time limit is spent")
        return min(wanted, remaining)

    # --- setup ------------------------------------------------------------------------

    async def setup(self) -> None:
        soft, hard = raise_fd_limit()
        self.redis = EmbeddedRedis(self.tmp / "redis")
        self.redis.start()
        assert self.redis.pid is not None
        self.fleet.add_process(self.redis.pid, "redis")
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_CLUSTER_URLS", "PROMETHEUS_MULTIPROC_DIR")
            and not k.startswith("GS_")
        }
        self.server_env = {
            "REDIS_URL": self.redis.url,
            "GS_TOKEN_SECRET": secrets.token_urlsafe(32),
            "GS_WORKERS": "1",
            "GS_DATA_DIR": str(self.tmp / "server"),
            "GS_GIFT_RATE_PER_S": str(GIFT_RATE_LIMIT),
            "GS_GIFT_BURST": str(GIFT_RATE_LIMIT),
            "GS_COMBO_GAP_MS": str(COMBO_GAP_MS),
        }
        server = ServerProcess(
            "server-a", env={**env, **self.server_env}, fleet=self.fleet, log_dir=self.logs
        )
        self.servers.append(server)
        await server.start()
        for i in range(self.p.client_processes):
            client = LineProcess(
                f"client-{i}",
                [sys.executable, "-m", "bench.worker", "--max-seconds", str(self.p.max_seconds)],
                fleet=self.fleet,
                log_path=self.logs / f"client-{i}.log",
            )
            self.clients.append(client)
            await client.start(env={**os.environ, "PYTHONPATH": str(REPO)})
        infos = await self.on_clients("info", timeout=30)
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        shown_env = {k: v for k, v in self.server_env.items() if k != "GS_TOKEN_SECRET"}
        shown_env["REDIS_URL"] = "embedded, " + self.redis.url
        self.report["conditions"] = {
            "machine": {
                "cores": psutil.cpu_count(logical=True),
                "physical_cores": psutil.cpu_count(logical=False),
                "cpu": cpu,
                "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                "python": platform.python_version(),
                "redis": Path(self.redis.binary).name,
            },
            "fd_limit": {
                "bench": {"soft": soft, "hard": hard},
                "server-a": dict(zip(("soft", "hard"), fd_limits(server.pid), strict=True)),
                "redis": dict(zip(("soft", "hard"), fd_limits(self.redis.pid), strict=True)),
                **{
                    f"client-{i}": {"soft": info["fd_soft"], "hard": info["fd_hard"]}
                    for i, info in enumerate(infos)
                },
            },
            "client_processes": self.p.client_processes,
            "client_loop": infos[0]["loop"],
            "server_processes": 1,
            "server_env": shown_env,
            "fanout_cpu_share": 0.5,
            "socket_buffer_bytes": 1024 * 1024,
            "host": "127.0.0.1 only",
        }
        c = self.report["conditions"]
        c["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
        self.say(f"giftstream bench, profile {self.p.name}")
        self.say(
            f"machine: {c['machine']['cores']} cores ({cpu}), {c['machine']['memory_gb']} GB, "
            f"Python {c['machine']['python']}, {c['machine']['redis']} (embedded, AOF everysec); "
            f"load average at start {c['load_average_at_start']}"
        )
        limits = ", ".join(f"{k} {v['soft']}/{v['hard']}" for k, v in c["fd_limit"].items())
        self.say(f"fd limit (soft/hard): {limits}")
        self.say(
            f"server: python -m server, 1 process, fan-out paced to half a core (a quiet "
            f"room's event at once), socket buffer 1 MiB; "
            f"env {', '.join(f'{k}={v}' for k, v in shown_env.items())}"
        )
        self.say(
            f"  (gift rate limit raised to {GIFT_RATE_LIMIT}/s per connection for the "
            f"closed-loop gift phase; fan-out senders each offer at most "
            f"{self.p.sender_rate:g}/s, under the default 20/s; combo gap raised so a "
            f"sender's n-th gift is combo n)"
        )
        self.say(f"clients: {self.p.client_processes} processes, {infos[0]['loop']} loop")
        await self.create_accounts()

    async def sign_up(self, name: str, packages: list[str]) -> Account:
        base = self.servers[0].url
        r = await self.http.post(
            base + "/api/users", json={"name": name, "birthdate": "1990-01-01", "region": "US"}
        )
        r.raise_for_status()
        account = Account(r.json()["user_id"], r.json()["token"])
        for package in packages:
            r = await self.http.post(
                base + "/api/wallet/recharge",
                json={
                    "package_id": package,
                    "card_number": APPROVED_CARD,
                    "idempotency_key": uuid.uuid4().hex,
                },
                headers={"Authorization": f"Bearer {account.token}"},
            )
            r.raise_for_status()
        return account

    async def create_room(self, title: str) -> str:
        creator = await self.sign_up("creator", [])
        r = await self.http.post(
            self.servers[0].url + "/api/rooms",
            json={"title": title},
            headers={"Authorization": f"Bearer {creator.token}"},
        )
        r.raise_for_status()
        return str(r.json()["room_id"])

    async def create_accounts(self) -> None:
        started = time.monotonic()
        per_room = sum(math.ceil(rate / self.p.sender_rate) for rate in self.p.fanout_rates)
        fanout = per_room * len(self.p.fanout_viewers)
        if self.p.two_processes:
            fanout += math.ceil(max(self.p.fanout_rates) / self.p.sender_rate)
        gifts = max(self.p.gift_senders)
        limit = asyncio.Semaphore(16)

        async def user(i: int, packages: list[str]) -> Account:
            async with limit:
                return await self.sign_up(f"bench {i}", packages)

        async def room(i: int) -> str:
            async with limit:
                return await self.create_room(f"bench room {i}")

        async with asyncio.timeout(self.left(120)), asyncio.TaskGroup() as tg:
            f_tasks = [tg.create_task(user(i, ["p1000"])) for i in range(fanout)]
            g_tasks = [
                tg.create_task(user(i, ["p10000"] * (4 if i == 0 else 1))) for i in range(gifts)
            ]
            r_tasks = [tg.create_task(room(i)) for i in range(self.p.gift_rooms)]
        self._fanout_senders = [t.result() for t in f_tasks]
        self._gift_senders = [t.result() for t in g_tasks]
        self._gift_rooms = [t.result() for t in r_tasks]
        self.say(
            f"setup: {fanout + gifts} funded senders and {self.p.gift_rooms} rooms over REST "
            f"in {time.monotonic() - started:.1f} s"
        )

    # --- talking to the client processes ------------------------------------------------

    async def on_clients(
        self, cmd: str, *, timeout: float, each: list[dict[str, Any]] | None = None, **args: Any
    ) -> list[dict[str, Any]]:
        """Run `cmd` on every client process at once (with `each[i]` for the i-th)."""
        timeout = self.left(timeout)
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(
                    client.call(cmd, timeout=timeout, **args, **(each[i] if each else {}))
                )
                for i, client in enumerate(self.clients)
            ]
        return [t.result() for t in tasks]

    async def connect_viewers(
        self, group: str, room_id: str, n: int, *, ports: list[int], path: str | None = None
    ) -> dict[str, Any]:
        """`n` viewers in `group` (the first `timed_viewers` timed), spread over the client
        processes, and over `ports` (one per server process) in equal shares."""
        k = len(self.clients)
        started = time.monotonic()
        connected = 0
        failed: Counter[str] = Counter()
        for port, share in zip(ports, split(n, len(ports)), strict=True):
            timed = split(min(self.p.timed_viewers, share), len(ports))[0] if share else 0
            replies = await self.on_clients(
                "viewers",
                timeout=self.p.connect_timeout_s + n / 100,
                each=[
                    {"n": count, "timed": t}
                    for count, t in zip(split(share, k), split(timed, k), strict=True)
                ],
                group=group,
                host="127.0.0.1",
                port=port,
                path=path or f"/ws/rooms/{room_id}",
                timeout_s=self.p.connect_timeout_s,
            )
            for reply in replies:
                connected += int(reply["connected"])
                failed.update(reply["failed"])
        seconds = time.monotonic() - started
        note = f", failed: {dict(failed)}" if failed else ""
        self.say(f"  connected {connected}/{n} viewers in {seconds:.1f} s{note}")
        return {"connected": connected, "failed": dict(failed), "seconds": round(seconds, 2)}

    async def connect_senders(self, group: str, specs: list[tuple[Account, str, int]]) -> int:
        """One sender per (account, room, port), dealt round-robin to client processes."""
        k = len(self.clients)
        each: list[dict[str, Any]] = [{"senders": []} for _ in range(k)]
        for i, (account, room_id, port) in enumerate(specs):
            each[i % k]["senders"].append(
                {
                    "user_id": account.user_id,
                    "port": port,
                    "path": f"/ws/rooms/{room_id}?token={account.token}",
                }
            )
        replies = await self.on_clients(
            "senders",
            timeout=self.p.connect_timeout_s + len(specs) / 50,
            each=each,
            group=group,
            host="127.0.0.1",
            timeout_s=self.p.connect_timeout_s,
        )
        connected = sum(int(r["connected"]) for r in replies)
        failed: Counter[str] = Counter()
        for r in replies:
            failed.update(r["failed"])
        if connected < len(specs):
            self.say(f"  senders connected {connected}/{len(specs)}, failed: {dict(failed)}")
        return connected

    async def close_group(self, group: str) -> None:
        await self.on_clients("close", timeout=30, group=group, timeout_s=10)

    def cpu_watch(self, extra: dict[str, list[int]] | None = None) -> CpuWatch:
        assert self.redis is not None and self.redis.pid is not None
        groups = {
            "server": [s.pid for s in self.servers],
            "redis": [self.redis.pid],
            **{c.name: [c.pid] for c in self.clients},
            **(extra or {}),
        }
        return CpuWatch(groups).start()

    def cpu_summary(self, cpu: dict[str, float]) -> dict[str, Any]:
        clients = [round(cpu[c.name], 1) for c in self.clients]
        ours = cpu["server"] + cpu["redis"] + sum(clients) + cpu.get("raw", 0.0)
        summary: dict[str, Any] = {
            "server": round(cpu["server"], 1),
            "redis": round(cpu["redis"], 1),
            "clients": clients,
            "machine": round(cpu["machine"], 1),
            # Everything else on the machine (the bench itself, other work).
            "other": round(max(0.0, cpu["machine"] - ours), 1),
        }
        if "raw" in cpu:
            summary["raw"] = round(cpu["raw"], 1)
        summary["clients_saturated"] = max(clients) >= CLIENT_SATURATED_PCT
        cores = psutil.cpu_count() or 1
        summary["machine_saturated"] = cpu["machine"] >= 95.0 * cores
        return summary

    @staticmethod
    def cpu_line(cpu: dict[str, Any]) -> str:
        parts = [f"server {cpu['server']:.0f}%"]
        if "raw" in cpu:
            parts = [f"raw server {cpu['raw']:.0f}%"]
        parts.append(f"redis {cpu['redis']:.0f}%")
        parts.append("clients " + "+".join(f"{x:.0f}" for x in cpu["clients"]) + "%")
        parts.append(f"other {cpu['other']:.0f}%")
        parts.append(f"machine {cpu['machine']:.0f}% of {100 * (psutil.cpu_count() or 1)}%")
        line = "CPU (% of one core): " + ", ".join(parts)
        if cpu["clients_saturated"]:
            line += "  [CLIENTS SATURATED: a client process used >= 90% of a core]"
        if cpu["machine_saturated"]:
            line += "  [MACHINE SATURATED]"
        return line

    async def room_state(self, room_id: str) -> dict[str, Any]:
        r = await self.http.get(f"{self.servers[0].url}/api/rooms/{room_id}")
        r.raise_for_status()
        state: dict[str, Any] = r.json()
        return state

    async def settled_room(self, room_id: str) -> dict[str, Any]:
        """The room's state once its seq stops moving (gifts still in the server's hands
        are published first), or as it is after a few seconds."""
        state = await self.room_state(room_id)
        deadline = time.monotonic() + min(8.0, self.p.drain_timeout_s)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            again = await self.room_state(room_id)
            if again["seq"] == state["seq"]:
                return again
            state = again
        return state

    async def server_metrics(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for server in self.servers:
            text = (await self.http.get(server.url + "/metrics")).text
            for name in (
                "giftstream_broadcast_frames_total",
                "giftstream_broadcast_bytes_total",
                "giftstream_slow_readers_closed_total",
            ):
                totals[name] = totals.get(name, 0.0) + metric(text, name)
        return totals

    def start_py_spy(self, label: str, seconds: float) -> asyncio.Task[None] | None:
        if not self.py_spy:
            return None
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(binary).exists():
            self.say("  (py-spy not found: pip install py-spy)")
            return None

        async def record() -> None:
            runs = []
            for server in self.servers:
                path = self.out / f"py-spy-{label}-{server.name}.txt"
                args = [
                    binary, "record", "--pid", str(server.pid),
                    "--duration", str(max(1, int(seconds))), "--rate", "100",
                    "--nonblocking", "--format", "raw", "--output", str(path),
                ]  # fmt: skip
                runs.append((server.name, path, args))
            async with asyncio.TaskGroup() as tg:
                for name, _, args in runs:
                    tg.create_task(
                        run_to_end(
                            args,
                            name=f"py-spy-{name}",
                            fleet=self.fleet,
                            log_path=self.logs / "py-spy.log",
                            timeout=seconds + 20,
                        )
                    )
            for name, path, _ in runs:
                if path.exists():
                    self.report.setdefault("profiles", {})[f"{label} {name}"] = summarize_collapsed(
                        path.read_text()
                    )

        async def guarded() -> None:
            # A profile that cannot be taken costs the profile, not the measurement.
            try:
                await record()
            except Exception as exc:  # noqa: BLE001
                self.say(f"  (py-spy failed: {type(exc).__name__}: {exc})")

        return asyncio.create_task(guarded(), name=f"py-spy-{label}")

    # --- 1 + 2: memory and fan-out ------------------------------------------------------

    async def memory_and_fanout(self) -> None:
        port = self.servers[0].port
        server_pid = self.servers[0].pid
        # Warm up first (imports, caches, first subscription), so that the idle baseline is
        # the server as it runs, not as it starts.
        warm_room = await self.create_room("warm-up")
        await self.connect_viewers("warm", warm_room, 20, ports=[port])
        warm = self._fanout_senders[-1:]
        await self.connect_senders("warm-s", [(a, warm_room, port) for a in warm])
        start_at = time.monotonic() + 0.1
        await self.on_clients(
            "send",
            timeout=30,
            group="warm-s",
            mode="open",
            max_in_flight=self.p.max_in_flight,
            rate=10,
            duration=1.0,
            start_at=start_at,
            settle_timeout=5,
            timeout_s=5,
        )
        await self.close_group("warm")
        await self.close_group("warm-s")
        await asyncio.sleep(1.0)
        self.say()
        self.report["fanout"] = []
        for index, viewers in enumerate(self.p.fanout_viewers):
            room_id = await self.create_room(f"fan-out {viewers}")
            group = f"fanout-{viewers}"
            if index == 0:
                rss_0 = rss_bytes(server_pid)
                idle_0 = await self.idle_cpu()
                self.say(
                    f"MEMORY: server RSS (process tree) at 0 viewers: {rss_0 / 1e6:.1f} MB; "
                    f"idle server CPU {idle_0:.1f}% of a core"
                )
            connected = await self.connect_viewers(group, room_id, viewers, ports=[port])
            if index == 0:
                await asyncio.sleep(1.0)
                idle_n = await self.idle_cpu()
                rss_n = rss_bytes(server_pid)
                n = connected["connected"]
                per = (rss_n - rss_0) / max(1, n) / 1000
                self.report["memory"] = {
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
                self.say(
                    f"MEMORY: server RSS at {n} idle viewers: {rss_n / 1e6:.1f} MB -> "
                    f"{per:.1f} KB per idle viewer; idle server CPU {idle_n:.1f}% of a core"
                )
                self.say()
            self.say(
                f"FAN-OUT: one room of {viewers} viewers ({min(self.p.timed_viewers, viewers)} "
                f"timed in full, all checked by seq), 1 server process"
            )
            for rate in self.p.fanout_rates:
                step = await self.fanout_step(
                    group=group,
                    room_id=room_id,
                    viewers=connected["connected"],
                    rate=rate,
                    ports=[port],
                    label=f"fanout-{viewers}-{rate}",
                )
                step["connect_seconds"] = connected["seconds"]
                self.report["fanout"].append(step)
            await self.close_group(group)
            self.say()

    async def idle_cpu(self, seconds: float = 2.0) -> float:
        """The server's CPU (% of a core) over `seconds` with nothing sent."""
        cpu = self.cpu_watch()
        await asyncio.sleep(seconds)
        return cpu.stop()["server"]

    async def fanout_step(
        self,
        *,
        group: str,
        room_id: str,
        viewers: int,
        rate: int,
        ports: list[int],
        label: str,
    ) -> dict[str, Any]:
        p = self.p
        n_senders = max(1, math.ceil(rate / p.sender_rate))
        per_sender = rate / n_senders
        accounts, self._fanout_senders = (
            self._fanout_senders[:n_senders],
            self._fanout_senders[n_senders:],
        )
        senders_group = f"{label}-senders"
        await self.connect_senders(
            senders_group, [(a, room_id, ports[i % len(ports)]) for i, a in enumerate(accounts)]
        )
        before = await self.room_state(room_id)
        metrics_before = await self.server_metrics()
        await self.on_clients("mark", timeout=10, group=group)
        # Senders' first gifts spread evenly over one interval, not all at once.
        offsets = {a.user_id: (i / n_senders) / per_sender for i, a in enumerate(accounts)}
        cpu = self.cpu_watch()
        start_at = time.monotonic() + 0.2
        is_storm = rate == max(p.fanout_rates) and viewers >= max(p.fanout_viewers) * 0.9
        spy = self.start_py_spy(label, p.step_seconds) if is_storm else None
        sent = await self.on_clients(
            "send",
            timeout=p.step_seconds + p.drain_timeout_s + 30,
            group=senders_group,
            mode="open",
            max_in_flight=self.p.max_in_flight,
            rate=per_sender,
            duration=p.step_seconds,
            start_at=start_at,
            offsets=offsets,
            keep_times=True,
            settle_timeout=p.drain_timeout_s,
        )
        after = await self.settled_room(room_id)
        drained = await self.on_clients(
            "drain",
            timeout=p.drain_timeout_s + 30,
            group=group,
            final_seq=int(after["seq"]),
            timeout_s=p.drain_timeout_s,
        )
        usage = self.cpu_summary(cpu.stop())
        metrics_after = await self.server_metrics()
        if spy is not None:
            await spy
        senders = [s for reply in sent for s in reply["senders"]]
        sent_at = {s["user_id"]: s["sent_at"] for s in senders}
        timed = await self.on_clients("latency", timeout=60, group=group, sent_at=sent_at)
        await self.close_group(senders_group)
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
        }
        lat = step["latency_ms"]
        self.say(
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
        self.say(
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
        self.say(
            f"        broadcast latency (send -> viewer receive): p50 {lat['p50']} ms, "
            f"p99 {lat['p99']} ms, max {lat['max']} ms ({lat['samples']} samples"
            + (f", {lat['unmatched']} unmatched" if lat["unmatched"] else "")
            + ")"
        )
        self.say("        " + self.cpu_line(usage))
        return step

    # --- 3: raw ceiling -----------------------------------------------------------------

    async def raw_ceiling(self) -> None:
        port = free_port()
        self.raw = LineProcess(
            "raw",
            [
                sys.executable,
                "-m",
                "bench.raw_server",
                "--port",
                str(port),
                "--max-seconds",
                str(self.p.max_seconds),
            ],
            fleet=self.fleet,
            log_path=self.logs / "raw-server.log",
        )
        await self.raw.start(env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.raw.greeting is not None
        async with asyncio.timeout(30):
            if await self.raw.greeting is None:
                raise ChildFailed(f"the raw server exited at start, see {self.raw.log_path}")
        soft, hard = fd_limits(self.raw.pid)
        self.report["conditions"]["fd_limit"]["raw"] = {"soft": soft, "hard": hard}
        self.say(
            "RAW CEILING: bare websockets server (asyncio, uvloop, broadcast(): encoded once, "
            f"written to all; fd limit {soft}/{hard}), same frames, same window, same clients"
        )
        self.report["raw"] = []
        for viewers in self.p.fanout_viewers:
            steps = [
                s
                for s in self.report["fanout"]
                if s["room_viewers"] >= viewers * 0.9 and s["room_viewers"] <= viewers
            ]
            stack = max(steps, key=lambda s: s["rate_offered"]) if steps else None
            frame_bytes = stack["frame_bytes_avg"] if stack and stack["frames"] else 2000
            per_frame = stack["events_per_frame"] if stack and stack["frames"] else 10
            group = f"raw-{viewers}"
            connected = await self.connect_viewers(group, "", viewers, ports=[port], path="/")
            await self.on_clients("mark", timeout=10, group=group)
            cpu = self.cpu_watch({"raw": [self.raw.pid]})
            start_at = time.monotonic() + 0.2
            result = await self.raw.call(
                "broadcast",
                timeout=self.left(self.p.step_seconds + 30),
                frame_bytes=frame_bytes,
                events_per_frame=max(1, round(per_frame)),
                window_ms=20,
                duration=self.p.step_seconds,
                start_at=start_at,
                skip_bytes=64 * 1024,
            )
            drained = await self.on_clients(
                "drain",
                timeout=self.p.drain_timeout_s + 30,
                group=group,
                final_seq=int(result["last_seq"]),
                timeout_s=self.p.drain_timeout_s,
            )
            usage = self.cpu_summary(cpu.stop())
            timed = await self.on_clients("latency", timeout=60, group=group)
            await self.close_group(group)
            latencies = [x for reply in timed for x in reply["latency_ms"]]
            frames = sum(d["frames"] for d in drained)
            events = sum(d["events"] for d in drained)
            lasts = [d["last_at"] for d in drained if d["last_at"]]
            span = max(1e-6, (max(lasts) if lasts else start_at + self.p.step_seconds) - start_at)
            raw_fps = frames / span
            stack_fps = stack["frames_per_s"] if stack else 0
            entry = {
                "clients": connected["connected"],
                "frame_bytes": result["frame_bytes"],
                "events_per_frame": max(1, round(per_frame)),
                "window_ms": 20,
                "duration_s": self.p.step_seconds,
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
            self.report["raw"].append(entry)
            lat = entry["latency_ms"]
            self.say(
                f"  {entry['clients']} clients, {entry['frame_bytes']} B frames of "
                f"{entry['events_per_frame']} events every 20 ms for {self.p.step_seconds:g} s: "
                f"{entry['frames_per_s']} frames/s received ({result['frames_written']} written,"
                f" {result['skipped']} skipped as the client was behind, "
                f"{result['late_ticks']}/{result['ticks']} ticks late), missing "
                f"{entry['missing']}; latency p50 {lat['p50']} ms p99 {lat['p99']} ms"
            )
            self.say("        " + self.cpu_line(usage))
            if stack:
                self.say(
                    f"        giftstream stack at {entry['stack_step']}: {stack_fps} frames/s "
                    f"= {entry['stack_over_raw']} x the raw ceiling"
                )
        await self.raw.stop()
        self.raw = None
        self.say()

    # --- 4: gifts -----------------------------------------------------------------------

    async def gift_run(
        self,
        *,
        label: str,
        n: int,
        mode: str,
        rate: float | None,
        ports: list[int],
        group: str | None = None,
    ) -> dict[str, Any]:
        p = self.p
        rooms = self._gift_rooms
        if group is None:
            group = f"gifts-{label}"
            specs = [
                (a, rooms[i % len(rooms)], ports[i % len(ports)])
                for i, a in enumerate(self._gift_senders[:n])
            ]
            await self.connect_senders(group, specs)
        cpu = self.cpu_watch()
        start_at = time.monotonic() + 0.2
        spy = self.start_py_spy(label, p.gift_seconds) if self.py_spy and n >= 500 else None
        args: dict[str, Any] = {"mode": mode, "start_at": start_at, "duration": p.gift_seconds}
        if mode == "open":
            assert rate is not None
            per = rate / n
            args["rate"] = per
            args["max_in_flight"] = p.max_in_flight
            args["offsets"] = {
                a.user_id: (i / n) / per for i, a in enumerate(self._gift_senders[:n])
            }
        replies = await self.on_clients(
            "send",
            timeout=p.gift_seconds + p.drain_timeout_s + 30,
            group=group,
            timeout_s=10,
            settle_timeout=p.drain_timeout_s,
            **args,
        )
        usage = self.cpu_summary(cpu.stop())
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
        }
        ack = result["ack_ms"]
        what = (
            f"{n} closed-loop senders"
            if mode == "closed"
            else f"{rate:g} gifts/s offered by {n} senders"
        )
        self.say(
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
        self.say("        " + self.cpu_line(usage))
        return result

    async def gifts(self) -> None:
        port = self.servers[0].port
        self.say(
            f"GIFTS: closed-loop senders (next gift once the last is acked), rooms dealt "
            f"round-robin from {len(self._gift_rooms)}, 1 server process"
        )
        runs = []
        for n in self.p.gift_senders:
            keep = n == max(self.p.gift_senders)
            runs.append(
                await self.gift_run(
                    label=f"closed-{n}",
                    n=n,
                    mode="closed",
                    rate=None,
                    ports=[port],
                    group=None,
                )
            )
            if not keep:
                await self.close_group(f"gifts-closed-{n}")
        # The open-loop run at the target's rate reuses the largest group's connections.
        n = max(self.p.gift_senders)
        runs.append(
            await self.gift_run(
                label=f"open-{self.p.gift_open_rate}",
                n=n,
                mode="open",
                rate=self.p.gift_open_rate,
                ports=[port],
                group=f"gifts-closed-{n}",
            )
        )
        await self.close_group(f"gifts-closed-{n}")
        self.report["gifts"] = runs
        self.say()

    # --- 5: two processes ---------------------------------------------------------------

    async def two_processes(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_CLUSTER_URLS", "PROMETHEUS_MULTIPROC_DIR")
            and not k.startswith("GS_")
        }
        second = ServerProcess(
            "server-b", env={**env, **self.server_env}, fleet=self.fleet, log_dir=self.logs
        )
        self.servers.append(second)
        await second.start()
        soft, hard = fd_limits(second.pid)
        self.report["conditions"]["fd_limit"]["server-b"] = {"soft": soft, "hard": hard}
        ports = [s.port for s in self.servers]
        viewers = max(self.p.fanout_viewers)
        rate = max(self.p.fanout_rates)
        self.say(
            f"TWO PROCESSES: two `python -m server` processes (ports {ports[0]}, {ports[1]}) "
            f"sharing the Redis (fd limit {soft}/{hard}); viewers and senders split evenly "
            "between them"
        )
        room_id = await self.create_room("two processes")
        connected = await self.connect_viewers("two", room_id, viewers, ports=ports)
        step = await self.fanout_step(
            group="two",
            room_id=room_id,
            viewers=connected["connected"],
            rate=rate,
            ports=ports,
            label="two-fanout",
        )
        await self.close_group("two")
        n = max(self.p.gift_senders)
        gifts = await self.gift_run(
            label=f"two-closed-{n}", n=n, mode="closed", rate=None, ports=ports
        )
        await self.close_group(f"gifts-two-closed-{n}")
        one_fanout = next(
            (
                s
                for s in self.report["fanout"]
                if s["rate_offered"] == rate and s["room_viewers"] >= viewers * 0.9
            ),
            None,
        )
        one_gifts = next((g for g in self.report["gifts"] if g["label"] == f"closed-{n}"), None)
        self.report["two_processes"] = {
            "fanout": {"one": one_fanout, "two": step},
            "gifts": {"one": one_gifts, "two": gifts},
        }
        if one_fanout and one_gifts:
            self.say(
                f"  one process -> two: fan-out {one_fanout['events_per_s']} -> "
                f"{step['events_per_s']} events/s, p99 {one_fanout['latency_ms']['p99']} -> "
                f"{step['latency_ms']['p99']} ms; gifts {one_gifts['acked_per_s']} -> "
                f"{gifts['acked_per_s']} acked/s, ack p99 {one_gifts['ack_ms']['p99']} -> "
                f"{gifts['ack_ms']['p99']} ms"
            )
        self.say()
