"""The processes the bench starts, and how it stops them.

Every child runs in its own session (its own process group), is recorded in a `Fleet`,
and is stopped by its group: SIGTERM, a grace period, SIGKILL. `Fleet.kill_all` is the
last resort that runs (synchronously) on any way out of the bench, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import psutil

from server import child

REPLY_LIMIT = 1 << 28


class ChildFailed(Exception):
    pass


class Fleet:
    """The process groups the bench started; `kill_all` ends every one still alive."""

    def __init__(self) -> None:
        self._groups: dict[int, str] = {}
        self._processes: dict[int, str] = {}

    def add(self, pgid: int, name: str) -> None:
        """A child started in its own session: its group id is its pid."""
        self._groups[pgid] = name

    def add_process(self, pid: int, name: str) -> None:
        """A child that shares the bench's process group (killed by pid alone)."""
        self._processes[pid] = name

    def discard(self, pid: int) -> None:
        self._groups.pop(pid, None)
        self._processes.pop(pid, None)

    def kill_all(self) -> list[str]:
        killed = []
        for pgid, name in list(self._groups.items()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                killed.append(name)
        for pid, name in list(self._processes.items()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
                    os.kill(pid, signal.SIGKILL)
                    killed.append(name)
        self._groups.clear()
        self._processes.clear()
        return killed


def _terminate_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class LineProcess:
    """A child that speaks JSON lines: each command carries an `id`, each reply the same
    `id` (id 0 is a greeting some children send once ready)."""

    def __init__(self, name: str, args: list[str], *, fleet: Fleet, log_path: Path) -> None:
        self.name = name
        self.args = args
        self.fleet = fleet
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        # The greeting (id 0) of a child that sends one; None if it exited first.
        self.greeting: asyncio.Future[dict[str, Any] | None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
                limit=REPLY_LIMIT,
            )
        self.fleet.add(self.proc.pid, self.name)
        self.greeting = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(), name=f"{self.name}-replies")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    reply = orjson.loads(line)
                    rid = int(reply.get("id", -1))
                except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                    continue  # not a reply (a stray print): ignored
                if rid == 0 and self.greeting is not None and not self.greeting.done():
                    self.greeting.set_result(reply)
                    continue
                waiter = self._waiting.pop(rid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        finally:
            gone = ChildFailed(f"{self.name} exited (see {self.log_path})")
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(gone)
            self._waiting.clear()
            if self.greeting is not None and not self.greeting.done():
                self.greeting.set_result(None)

    async def call(self, cmd: str, *, timeout: float, **args: Any) -> dict[str, Any]:
        """Send one command and return its reply; `ChildFailed` if the child reports a
        failure or exits, TimeoutError after `timeout` seconds."""
        assert self.proc is not None and self.proc.stdin is not None
        rid = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = waiter
        self.proc.stdin.write(orjson.dumps({"id": rid, "cmd": cmd, **args}) + b"\n")
        try:
            await self.proc.stdin.drain()
            async with asyncio.timeout(timeout):
                reply = await waiter
        finally:
            self._waiting.pop(rid, None)
        if not reply.get("ok"):
            raise ChildFailed(f"{self.name} {cmd}: {reply.get('error')}")
        return reply

    async def stop(self, *, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.write(b'{"id":-1,"cmd":"quit"}\n')
                    proc.stdin.close()
                try:
                    async with asyncio.timeout(grace):
                        await proc.wait()
                except TimeoutError:
                    _terminate_group(proc.pid)
                    try:
                        async with asyncio.timeout(grace):
                            await proc.wait()
                    except TimeoutError:
                        _kill_group(proc.pid)
                        await proc.wait()
        finally:
            # Whatever the child started in its group goes with it.
            _kill_group(proc.pid)
            self.fleet.discard(proc.pid)
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader


async def run_to_end(
    args: list[str], *, name: str, fleet: Fleet, log_path: Path, timeout: float
) -> int:
    """Run a command in its own session, output to `log_path`, and wait for it to end
    (its group is killed after `timeout` seconds, and on any way out). Its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    fleet.add(proc.pid, name)
    try:
        async with asyncio.timeout(timeout):
            return await proc.wait()
    finally:
        _kill_group(proc.pid)
        if proc.returncode is None:
            await proc.wait()
        fleet.discard(proc.pid)


class ServerProcess:
    """`python -m server` as the tests and the load runner start it (`server.child`), named,
    in the fleet, started and stopped without holding up the bench's event loop. `env` is
    its whole environment."""

    def __init__(self, name: str, *, env: dict[str, str], fleet: Fleet, log_dir: Path) -> None:
        self.name = name
        self.fleet = fleet
        self._child = child.ServerProcess(base_env=env, log_path=log_dir / f"{name}.log")

    @property
    def port(self) -> int:
        return self._child.port

    @property
    def url(self) -> str:
        return self._child.url

    @property
    def pid(self) -> int:
        return self._child.pid

    async def start(self, *, timeout: float = 30.0) -> None:
        try:
            await asyncio.to_thread(self._child.start, timeout_s=timeout)
        except child.ServerStartError as exc:
            raise ChildFailed(f"{self.name}: {exc}") from exc
        self.fleet.add(self._child.pid, self.name)

    async def stop(self, *, grace: float = 10.0) -> None:
        if self._child.proc is None:
            return
        pid = self._child.pid
        await asyncio.to_thread(self._child.stop, timeout_s=grace)
        self.fleet.discard(pid)


# --- measuring processes ------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by the trees rooted at `pids`."""
    total = 0.0
    for pid in pids:
        for p in tree(pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def fd_limits(pid: int) -> tuple[int, int]:
    soft, hard = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
    return int(soft), int(hard)


class CpuWatch:
    """CPU used by named groups of process trees, and by the whole machine, between
    `start()` and `stop()`; in % of one core (200% is both cores of this machine)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self._wall = 0.0
        self._machine: Any = None
        self.result: dict[str, float] = {}
        # How long it watched (set by `stop`).
        self.seconds = 0.0

    def start(self) -> CpuWatch:
        self._start = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self._machine = psutil.cpu_times()
        self._wall = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self._wall)
        self.seconds = wall
        result = {
            name: 100.0 * (cpu_seconds(pids) - self._start[name]) / wall
            for name, pids in self.groups.items()
        }
        result["machine"] = 100.0 * (_busy(psutil.cpu_times()) - _busy(self._machine)) / wall
        self.result = result
        return result


def _busy(times: Any) -> float:
    # guest time is already counted in user time.
    names = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(getattr(times, name, 0.0) for name in names))
