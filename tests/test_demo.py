"""The demo command's program (`python -m server.demo`, what `scripts/demo` runs): a server
on its own embedded Redis, rooms filled with viewer bots, the page's address printed;
Ctrl-C, SIGTERM and the terminal's hang-up stop everything it started, and it refuses a
port that is taken."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

import httpx
import psutil
import pytest

from server.embedded import free_port

DEMO = [sys.executable, "-m", "server.demo", "--rooms", "2", "--viewers", "6", "--minutes", "2"]


def demo_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_CLUSTER_URLS")}
    env |= {"GS_DATA_DIR": str(tmp_path / "data"), "GS_PORT": str(port)}
    env.pop("GS_TOKEN_SECRET", None)
    return env


def _controlling_terminal() -> None:  # pragma: no cover - runs in the child
    # The demo leads a session of its own with the pty as its terminal, as in a shell
    # window: closing the pty's other end hangs it up (SIGHUP).
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "hangup"])
def test_demo_fills_rooms_and_stops_everything_it_started(tmp_path: Path, how: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    master, slave = pty.openpty()
    demo = subprocess.Popen(
        DEMO,
        env=demo_env(tmp_path, port),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_controlling_terminal if how == "hangup" else None,
    )
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while b"demo is live" not in output:
            assert time.monotonic() < deadline, output.decode()
            assert demo.poll() is None, output.decode()
            try:
                output += os.read(master, 65536)
            except OSError:  # EIO: no writer yet, or all gone
                time.sleep(0.05)
        assert f"open {url}/ in your browser".encode() in output
        assert httpx.get(url + "/", timeout=5).status_code == 200

        def lively() -> bool:
            rooms = httpx.get(url + "/api/rooms", timeout=5).json()["rooms"]
            return len(rooms) == 2 and all(room["viewers"] > 0 for room in rooms)

        while not lively():
            assert time.monotonic() < deadline, "the bots never filled the rooms"
            time.sleep(0.2)
        redis_dir = tmp_path / "data" / "redis"
        assert any(redis_dir.glob("**/*.aof")), "the embedded Redis keeps an append-only file"
        # Everything the demo started: the server, its Redis, the bots.
        started = psutil.Process(demo.pid).children(recursive=True)
        assert len(started) >= 3, started

        if how == "ctrl-c":
            demo.send_signal(signal.SIGINT)
        elif how == "sigterm":
            demo.send_signal(signal.SIGTERM)
        if how == "hangup":
            os.close(master)  # the terminal window closed
            master = -1
        else:
            os.set_blocking(master, False)
        assert demo.wait(30) == 0
        if master >= 0:
            try:
                while chunk := os.read(master, 65536):
                    output += chunk
            except (BlockingIOError, OSError):
                pass
            assert b"Traceback" not in output, output.decode()
            assert b"client_sim summary" in output  # the bots stopped and said what they saw
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"left running after {how}: {alive}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=1)
    finally:
        if master >= 0:
            os.close(master)
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_demo_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        run = subprocess.run(
            DEMO, env=demo_env(tmp_path, port), capture_output=True, text=True, timeout=30
        )
    assert run.returncode == 1
    assert f"demo: port {port} on 127.0.0.1 is taken" in run.stderr
    assert "live" not in run.stdout
    assert not (tmp_path / "data").exists()  # nothing was started
