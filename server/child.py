"""`python -m server` as a child process on 127.0.0.1 (or another address, under a
launcher such as `ip netns exec`): how the demo, the tests, the load runner and the
benchmark start the server (the image's entry point too), configured only through its
environment.

The child leads a process group of its own, with its worker processes: a Ctrl-C in the
terminal reaches only whoever started it, which stops it in order, and `stop` or `kill`
leave no worker behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from server.embedded import free_port


class ServerStartError(RuntimeError):
    pass


class PortTaken(ServerStartError):
    pass


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """`PortTaken` if something listens on `host`:`port` already: then whatever answers
    there is not the server about to start (a demo left running, say)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # not an address of this machine's: the server will say so itself
            raise PortTaken(
                f"port {port} on {host} is taken ({exc.strerror}): is another server or "
                f"demo running? Stop it, or choose another port (--port)"
            ) from None


class ServerProcess:
    """`with ServerProcess(env={...}) as server: server.url` starts it on `port` (a free
    one by default), waits for /healthz, and stops it on exit. Its environment is
    `base_env` (this process's by default) with `env` over it; its output goes to
    `log_path`, or to this process's own output without one."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        host: str = "127.0.0.1",
        launcher: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        # Where it listens, and what it is started under (`ip netns exec <ns>`, which
        # execs it in place: the pid is the server's).
        self.host = host
        self.launcher = tuple(launcher)
        self.env = dict(env or {})
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the server is not running")
        return self.proc.pid

    def start(self, *, timeout_s: float = 30.0) -> ServerProcess:
        """Start it and wait for /healthz. `PortTaken` if the port is in use before it
        starts (what answers there would not be this server), `ServerStartError` if it
        exits or does not answer in `timeout_s`."""
        if not self.launcher:  # under a launcher (a namespace) the port is not ours to see
            check_port_free(self.port, self.host)
        env = {**self.base_env, "GS_HOST": self.host, "GS_PORT": str(self.port), **self.env}
        log: int | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        server = [sys.executable, "-m", "server"]
        try:
            self.proc = subprocess.Popen(
                [*self.launcher, *server],
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                start_new_session=True,
            )
        finally:
            if log is not None:
                os.close(log)
        where = f"; see {self.log_path}" if self.log_path else ""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"the server exited at start{where}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise ServerStartError(f"the server did not answer /healthz in {timeout_s:g} s{where}")

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """SIGTERM (a clean shutdown: the server drains, GS_DRAIN_S + GS_SHUTDOWN_TIMEOUT_S
        + GS_DRAIN_GIFT_STEPS_S at most, and stops its embedded Redis), then SIGKILL for
        whatever of its group is left after `timeout_s`."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill(self) -> None:
        """SIGKILL to the server and its workers at once, as a crash would."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
