"""On a real Redis Cluster (three primaries, slots spread over them): the same scripts,
the same saga, the same fan-out. Built with `redis-server` and `redis-cli` from PATH;
without them this module is skipped and says so."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from server.embedded import free_port
from tests.accounts import funded
from tests.live_server import LiveServer
from tests.room_client import RoomClient, chat, gift, live_room

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="a Redis Cluster is built from redis-server and redis-cli, not found on PATH",
)


def _wait_cluster_ok(ports: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for port in ports:
            try:
                info = redis.Redis(port=port, socket_timeout=1, decode_responses=True).cluster(
                    "INFO"
                )
                states.append(info.get("cluster_state") == "ok")
            except redis.RedisError:
                states.append(False)
        if all(states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster never reached cluster_state:ok")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            folder: Path = tmp_path_factory.mktemp(f"node{port}")
            procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        # Its bus port is chosen too (port + 10000 may not exist).
                        "--cluster-port", str(free_port()),
                        "--cluster-config-file", "nodes.conf",
                        "--dir", str(folder),
                        "--save", "",
                        "--appendonly", "no",
                        "--logfile", str(folder / "log"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if redis.Redis(port=port, socket_timeout=1).ping():
                        break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait_cluster_ok(ports)
        yield ",".join(f"redis://127.0.0.1:{p}/0" for p in ports)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster_server(
    cluster_urls: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {"REDIS_URL": "", "REDIS_CLUSTER_URLS": cluster_urls}
    server = LiveServer("", log_dir=tmp_path_factory.mktemp("cluster"), env=env).start()
    yield server
    server.stop()


async def test_gifts_chat_and_money_on_a_cluster(
    cluster_server: LiveServer, cluster_urls: str
) -> None:
    async with httpx.AsyncClient(base_url=cluster_server.url, timeout=15) as http:
        creator, room_id = await live_room(http)
        fans = [await funded(http, "p100", name=f"Fan{i}") for i in range(3)]
        url = cluster_server.ws_url
        watcher = await RoomClient.open(url, room_id)
        senders = [await RoomClient.open(url, room_id, token=f.token) for f in fans]
        try:
            for sender in senders:
                answers = [await sender.request(gift(count=2)) for _ in range(3)]
                assert [a["coins"] for a in answers] == [98, 96, 94]
            await senders[0].send(chat("hello, cluster"))
            await watcher.until_seq(10)
            assert [e["kind"] for e in watcher.events] == ["gift"] * 9 + ["chat"]
            assert [e["seq"] for e in watcher.events] == list(range(1, 11))
        finally:
            for client in (watcher, *senders):
                await client.close()
        # On a cluster the last credit and its event go to different nodes at once.
        async with asyncio.timeout(10):
            while (await http.get("/api/wallet", headers=creator.headers)).json()["diamonds"] != 18:
                await asyncio.sleep(0.05)
        r = await http.get("/api/wallet", headers=creator.headers)
        assert r.json()["diamonds"] == 18
        r = await http.get(f"/api/rooms/{room_id}")
        assert r.status_code == 200
    audit = subprocess.run(
        [sys.executable, "-m", "server.audit"],
        env={**os.environ, "REDIS_URL": "", "REDIS_CLUSTER_URLS": cluster_urls},
        capture_output=True,
        timeout=60,
    )
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()
    assert b"audit OK" in audit.stdout
