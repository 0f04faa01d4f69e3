"""Readiness and drain: `/readyz` is 503 while Redis is away or the process is draining
(`/healthz` stays 200); SIGTERM closes every WebSocket with 1012, spread over GS_DRAIN_S,
and the server exits 0, with one process or several."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.mmap_dict import MmapedDict
from starlette.applications import Starlette

from server.app import create_app
from server.embedded import EmbeddedRedis
from server.lifecycle import Lifecycle
from server.settings import Settings
from tests.live_server import TEST_SECRET, LiveServer
from tests.room_client import RoomClient, live_room
from tests.test_metrics import samples


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


async def test_readyz_is_503_while_redis_is_away_and_healthz_stays_200(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    server = LiveServer(own_redis.url, log_dir=tmp_path / "logs").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/readyz")).status_code == 200
            own_redis.stop()
            r = await http.get("/readyz")
            assert r.status_code == 503
            assert r.json()["code"] == "unavailable" and "redis" in r.json()["message"]
            assert (await http.get("/healthz")).status_code == 200  # alive all the same
            own_redis.start()  # same port, same folder
            deadline = time.monotonic() + 30
            while (await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "never ready again"
                await asyncio.sleep(0.2)
    finally:
        server.stop()


async def test_readyz_is_503_once_draining(redis_url: str) -> None:
    app = create_app(Settings(redis_url=redis_url, token_secret=TEST_SECRET))
    assert isinstance(app, Starlette)
    async with app.router.lifespan_context(app) as state:
        assert state is not None
        lifecycle = state["lifecycle"]
        assert isinstance(lifecycle, Lifecycle) and app.state.lifecycle is lifecycle
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/readyz")).status_code == 200
            lifecycle.draining = True  # what the server sets on SIGTERM
            r = await http.get("/readyz")
            assert r.status_code == 503 and "draining" in r.json()["message"]
            assert (await http.get("/healthz")).status_code == 200


async def test_sigterm_closes_every_socket_with_1012_spread_out_and_exits_0(
    redis_url: str, tmp_path: Path
) -> None:
    drain_s, viewers = 1.5, 15
    server = LiveServer(
        redis_url, log_dir=tmp_path / "logs", env={"GS_DRAIN_S": str(drain_s)}
    ).start()
    clients: list[RoomClient] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            _, room_id = await live_room(http)
        clients = [await RoomClient.open(server.ws_url, room_id) for _ in range(viewers)]
        closed_at: list[float] = []

        async def closed(client: RoomClient) -> int | None:
            code = await client.closed_with()
            closed_at.append(time.monotonic())
            return code

        waiting = [asyncio.create_task(closed(c)) for c in clients]
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # as `docker stop` or Kubernetes would
        codes = await asyncio.gather(*waiting)
        assert codes == [1012] * viewers
        # In batches every 100 ms over GS_DRAIN_S, not all at once: 15 sockets, one a
        # batch, are at least 1.4 s of pauses apart on the server.
        assert max(closed_at) - min(closed_at) >= drain_s / 3
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
    finally:
        for client in clients:
            await client.close()
        server.stop()
    text = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "draining: closing 15 websockets" in text and "Traceback" not in text


def open_sockets_by_pid(metrics_dir: Path) -> dict[int, float]:
    """Each worker's own `giftstream_connections_open`, from its multiprocess file."""
    found = {}
    for path in metrics_dir.glob("gauge_livesum_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        entries = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
        for key, value, *_ in entries:
            if orjson.loads(key)[1] == "giftstream_connections_open":
                found[pid] = float(value)
    return found


async def test_with_workers_a_dead_workers_sockets_are_forgotten_and_sigterm_exits_0(
    redis_url: str, tmp_path: Path
) -> None:
    """Two workers: one killed is replaced, and /metrics stops counting its sockets (the
    supervisor marks it dead); SIGTERM to the supervisor alone (as `docker stop` sends
    it) drains both and exits 0."""
    data = tmp_path / "data"
    server = LiveServer(
        redis_url,
        log_dir=tmp_path / "logs",
        env={"GS_WORKERS": "2", "GS_DATA_DIR": str(data), "GS_DRAIN_S": "0.5"},
    ).start()
    clients: list[RoomClient] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            _, room_id = await live_room(http)
            clients = [await RoomClient.open(server.ws_url, room_id) for _ in range(12)]

            async def open_total() -> float:
                # A connection of its own each time: the worker it reaches may be killed.
                text = (await http.get("/metrics", headers={"Connection": "close"})).text
                return samples(text)["giftstream_connections_open"]

            assert await open_total() == 12
            by_pid = open_sockets_by_pid(data / "prometheus")
            victim = max(by_pid, key=lambda pid: by_pid[pid])
            survivors = 12 - int(by_pid[victim])
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while await open_total() != survivors:
                assert time.monotonic() < deadline, "the dead worker's sockets still count"
                await asyncio.sleep(0.2)
        waiting = [asyncio.create_task(c.closed_with()) for c in clients]
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*waiting)
        # The dead worker's sockets were cut (no close frame); the others drained.
        assert sorted(c for c in codes if c is not None) == [1012] * survivors
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
    finally:
        for client in clients:
            await client.close()
        server.stop()
    text = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert f"worker {victim} exited (code -9): starting another" in text
