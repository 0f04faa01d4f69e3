"""The server under test as a child process: `python -m server` on 127.0.0.1 and a free
port, configured only through its environment (GS_PORT, GS_WORKERS, REDIS_URL, ...)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
import psutil


class ServerStartError(Exception):
    pass


class ServerProcess:
    """`with ServerProcess(...) as server: server.url` starts it, waits for /healthz, and
    stops it (SIGTERM, then SIGKILL after `stop_timeout_s`) on exit."""

    def __init__(
        self,
        *,
        port: int,
        redis_url: str,
        workers: int,
        data_dir: Path,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.port = port
        self.redis_url = redis_url
        self.workers = workers
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, *, timeout_s: float = 60.0) -> None:
        env = {
            **os.environ,
            "GS_HOST": "127.0.0.1",
            "GS_PORT": str(self.port),
            "GS_WORKERS": str(self.workers),
            "REDIS_URL": self.redis_url,
            "GS_DATA_DIR": str(self.data_dir),
            **self.extra_env,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server"],
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"the server exited at start; see {self.log_path}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"the server did not answer /healthz in {timeout_s:g} s")

    def stop(self, *, stop_timeout_s: float = 15.0) -> None:
        """SIGTERM and wait; SIGKILL what is left after `stop_timeout_s`, worker processes
        included (a supervisor that dies first must not leave them running)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _, alive = psutil.wait_procs(children, timeout=5.0)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=5.0)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
