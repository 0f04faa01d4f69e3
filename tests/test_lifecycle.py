"""`python -m server` as a new user meets it: `--help`, one clear line and a non-zero exit
for what cannot run (a busy port, an unknown host, a bad setting, a data folder another
server wrote, a folder in use), a "listening on" line, and a clean stop on SIGTERM, SIGHUP
and Ctrl-C that leaves no Redis behind, even after a kill."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import redis

from server.__main__ import main as server_main
from server.embedded import EmbeddedRedis, bundled_valkey

START_S = 30


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "REDIS_CLUSTER_URLS", "GS_TOKEN_SECRET")
        and not k.startswith("GS_")
    }
    return {**env, "GS_DATA_DIR": str(data_dir), "GS_HOST": "127.0.0.1", **extra}


def run_server(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m server ARGS` that is expected to end by itself."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_S,
        stdin=subprocess.DEVNULL,
    )


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def redis_on(data_dir: Path) -> list[psutil.Process]:
    """The processes holding the folder's lock: its embedded Redis while it runs."""
    lock = str((data_dir / "redis" / ".giftstream.lock").resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            if any(f.path == lock for f in proc.open_files()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def no_redis_on(data_dir: Path) -> bool:
    return not redis_on(data_dir)


def stop_redis_on(data_dir: Path) -> None:
    """After a failed test: stop a Redis it left (SIGTERM, so it flushes and goes)."""
    left = redis_on(data_dir)
    for proc in left:
        proc.terminate()
    psutil.wait_procs(left, timeout=10)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def in_process(monkeypatch: pytest.MonkeyPatch, data_dir: Path, *args: str, **env: str) -> int:
    """`python -m server ARGS` run in this process, for what ends before anything starts
    (it returns before configuring logs or signals)."""
    for name in list(os.environ):
        if name.startswith("GS_") or name in ("REDIS_URL", "REDIS_CLUSTER_URLS"):
            monkeypatch.delenv(name)
    # Port 0 unless a test says otherwise: should anything start, it takes no one's port.
    for name, value in server_env(data_dir, **{"GS_PORT": "0", **env}).items():
        monkeypatch.setenv(name, value)
    try:
        return server_main(list(args))
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        return exc.code


def test_help_prints_the_options_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert in_process(monkeypatch, tmp_path / "data", "--help") == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--workers", "--redis-url", "--log-format", "--drain-s"):
        assert option in out
    assert "GS_PORT" in out  # each option names its environment variable
    assert not (tmp_path / "data").exists()  # no Redis, no secret: nothing started


def test_a_busy_port_is_one_line_and_exit_1_with_no_redis_started(
    tmp_path: Path,
    taken_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    assert in_process(monkeypatch, data, GS_PORT=str(taken_port)) == 1
    line = one_line(capsys.readouterr().err)
    assert f"cannot listen on 127.0.0.1:{taken_port}" in line and "in use" in line
    assert not data.exists()  # bound first: no Redis was started


def test_an_unknown_host_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert in_process(monkeypatch, tmp_path / "data", "--host", "no-such-host.invalid") == 1
    assert "cannot resolve host 'no-such-host.invalid'" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"GS_PORT": "70000"}, (), "GS_PORT must be between 0 and 65535, got 70000"),
        ({}, ("--port", "70000"), "--port (GS_PORT) must be between 0 and 65535"),
        ({"GS_WS_COMPRESSION": "maybe"}, (), "GS_WS_COMPRESSION must be one of"),
        ({"REDIS_URL": "notaurl"}, (), "REDIS_URL must be a URL like redis://host:6379/0"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    args: tuple[str, ...],
    message: str,
) -> None:
    assert in_process(monkeypatch, tmp_path / "data", *args, **env) == 2
    assert message in one_line(capsys.readouterr().err)


def test_the_process_exits_2_with_one_line_for_a_bad_setting(tmp_path: Path) -> None:
    run = run_server(server_env(tmp_path / "data", GS_ENV="prod"))
    assert run.returncode == 2
    assert "GS_ENV must be development or production, got 'prod' (did you mean production?)" in (
        one_line(run.stderr)
    )


def wait_listening(proc: subprocess.Popen[str], log: Path) -> str:
    """The URL of the "listening on" line, once the server printed it."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text())
        if found:
            return found.group(1)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(log.read_text())


def start_server(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[str]:
    with open(log, "a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "server", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )


def stop_group(proc: subprocess.Popen[str]) -> None:
    """After a test: the server and its workers gone (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize(("sig", "log_format"), [(signal.SIGHUP, "json"), (signal.SIGINT, "text")])
def test_listening_line_then_a_stop_signal_exits_0_and_stops_redis(
    tmp_path: Path, sig: signal.Signals, log_format: str
) -> None:
    """(SIGTERM: tests/test_entry_point.py and the drain tests.) SIGHUP is what closing
    the terminal sends; uvicorn alone would die of it and orphan the Redis."""
    data, log = tmp_path / "data", tmp_path / "server.log"
    proc = start_server(server_env(data, GS_LOG_FORMAT=log_format), log, "--port", "0")
    try:
        url = wait_listening(proc, log)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        assert not no_redis_on(data)
        if log_format == "json":
            # Garbage on the socket: uvicorn's own logger warns about it.
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(b"\x00\x01 not http\r\n\r\n")
                raw.recv(1024)
            deadline = time.monotonic() + START_S
            while "uvicorn.error" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        proc.send_signal(sig)
        assert proc.wait(START_S) == 0, log.read_text()
    finally:
        stop_group(proc)
        stop_redis_on(data)
    assert no_redis_on(data)
    text = log.read_text()
    assert "Traceback" not in text
    if log_format == "json":
        entries = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        assert {"ts", "level", "logger", "message", "pid"} <= set(entries[0])
        assert {"server", "server.embedded", "uvicorn.error"} & {e["logger"] for e in entries}
        assert {"server", "uvicorn.error"} <= {e["logger"] for e in entries}
        assert any("listening on" in e["message"] for e in entries)


def test_a_folder_in_use_is_refused_and_a_killed_servers_redis_is_stopped(
    tmp_path: Path,
) -> None:
    data, log, log2 = tmp_path / "data", tmp_path / "first.log", tmp_path / "second.log"
    first = start_server(server_env(data), log, "--port", "0")
    try:
        wait_listening(first, log)
        # A second server on the same folder would run a second Redis on the same files.
        run = run_server(server_env(data), "--port", "0")
        assert run.returncode == 1
        assert "is in use by another server" in one_line(run.stderr)
        first.kill()  # SIGKILL: its Redis is left running, holding the folder
        first.wait()
        assert not no_redis_on(data)
        second = start_server(server_env(data), log2, "--port", "0")
        try:
            wait_listening(second, log2)
            assert "left running" in log2.read_text()
            second.send_signal(signal.SIGTERM)
            assert second.wait(START_S) == 0
        finally:
            stop_group(second)
    finally:
        stop_group(first)
        leftover = redis_on(data)
        stop_redis_on(data)
    assert not leftover


@pytest.mark.skipif(
    shutil.which("redis-server") is None or bundled_valkey() is None,
    reason="needs redis-server on PATH and the bundled Valkey",
)
def test_a_data_folder_written_by_valkey_is_kept_and_redis_7_is_refused(
    tmp_path: Path,
) -> None:
    valkey = bundled_valkey()
    assert valkey is not None
    folder = tmp_path / "data" / "redis"
    with EmbeddedRedis(folder, binary=valkey) as server:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        client.close()
    # auto: the server that wrote the folder, although redis-server is first on PATH.
    with EmbeddedRedis(folder) as server:
        assert server.name.startswith("valkey-server")
        client = redis.Redis.from_url(server.url)
        assert client.get("kept") == b"yes"
        client.close()
    # Asked for redis-server 7.0, which cannot read Valkey's files: one line, the way out.
    run = run_server(server_env(tmp_path / "data", GS_REDIS_SERVER="redis-server"))
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert "was written by valkey-server" in line
    assert f"mv {folder} {folder}.valkey-" in line
    assert no_redis_on(tmp_path / "data")
