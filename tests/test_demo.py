"""The demo command's program (`python -m server.demo`, what `scripts/demo` runs): a server
on its own embedded Redis, rooms filled with viewer bots, the page's address printed;
Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from server.embedded import free_port


def test_demo_fills_rooms_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_CLUSTER_URLS")}
    env |= {"GS_DATA_DIR": str(tmp_path / "data"), "GS_PORT": str(port)}
    env.pop("GS_TOKEN_SECRET", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "server.demo", "--rooms", "2", "--viewers", "8", "--minutes", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert demo.stdout is not None
        lines: list[bytes] = []
        deadline = time.monotonic() + 60
        while not any(b"demo is live" in line for line in lines):
            assert time.monotonic() < deadline, b"".join(lines).decode()
            line = demo.stdout.readline()
            assert line, b"".join(lines).decode()  # it exited
            lines.append(line)
        assert f"open {url}/ in your browser".encode() in b"".join(lines)
        assert httpx.get(url + "/", timeout=5).status_code == 200

        def lively() -> bool:
            rooms = httpx.get(url + "/api/rooms", timeout=5).json()["rooms"]
            return len(rooms) == 2 and all(room["viewers"] > 0 for room in rooms)

        while not lively():
            assert time.monotonic() < deadline, "the bots never filled the rooms"
            time.sleep(0.2)
        redis_dir = tmp_path / "data" / "redis"
        assert any(redis_dir.glob("**/*.aof")), "the embedded Redis keeps an append-only file"

        demo.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = demo.communicate(timeout=30)
        assert demo.returncode == 0
        assert b"Traceback" not in out, out.decode()
        assert b"client_sim summary" in out  # the bots stopped and said what they saw
        try:
            httpx.get(url + "/healthz", timeout=1)
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the server still answers after the demo stopped")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
