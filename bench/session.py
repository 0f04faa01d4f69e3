"""What every phase of the bench run shares: Redis, the server(s), the load-client
processes and how to talk to them, the accounts and rooms made at setup, CPU and memory
watches, py-spy, and the printed lines of the report. `BenchSession` owns every process it
starts (`teardown` stops them all); the phases (`bench.memory`, `bench.fanout`,
`bench.raw_ceiling`, `bench.gifts`, `bench.two_processes`) are functions of one."""

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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.limits import raise_fd_limit
from bench.processes import (
    CpuWatch,
    Fleet,
    LineProcess,
    ServerProcess,
    fd_limits,
    run_to_end,
)
from bench.profiles import Profile
from bench.report import summarize_collapsed
from server.embedded import EmbeddedRedis

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


class BenchSession:
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
        self.fanout_senders: list[Account] = []
        self.gift_senders: list[Account] = []
        self.gift_rooms: list[str] = []
        self._deadline = time.monotonic() + profile.max_seconds
        self.printed: list[str] = []

    def say(self, line: str = "") -> None:
        """Print a line of the results (and keep it for the markdown report)."""
        print(line, flush=True)
        self.printed.append(line)

    # --- lifetime ---------------------------------------------------------------------

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
        self.fanout_senders = [t.result() for t in f_tasks]
        self.gift_senders = [t.result() for t in g_tasks]
        self.gift_rooms = [t.result() for t in r_tasks]
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

    @contextlib.asynccontextmanager
    async def loop_lag(self) -> AsyncIterator[list[float]]:
        """The servers' worst event-loop lag, in seconds, while inside: their
        `giftstream_loop_lag_max_seconds` (worst of the last 5 s) polled every second,
        and once more on the way out. The one item of the list is the worst so far."""
        worst = [0.0]

        async def poll_once() -> None:
            for server in self.servers:
                with contextlib.suppress(httpx.HTTPError):
                    text = (await self.http.get(server.url + "/metrics")).text
                    worst[0] = max(worst[0], metric(text, "giftstream_loop_lag_max_seconds"))

        async def poll() -> None:
            while True:
                await poll_once()
                await asyncio.sleep(1.0)

        task = asyncio.create_task(poll(), name="bench-loop-lag")
        try:
            yield worst
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await poll_once()

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

    async def idle_cpu(self, seconds: float = 2.0) -> float:
        """The server's CPU (% of a core) over `seconds` with nothing sent."""
        cpu = self.cpu_watch()
        await asyncio.sleep(seconds)
        return cpu.stop()["server"]
