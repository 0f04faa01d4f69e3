"""Fan-out on real sockets, with the server in this test's own event loop so the test can
ask the hub what it is doing at the moment an answer arrives: a big room's flush is
written in slices, and a sender's gift is acked while a flush of many sockets is
still under way (a thousand of them here)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import resource
from collections.abc import AsyncIterator, Generator

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette

from bench.wire import WebSocketClient
from bench.wire import connect as ws_connect
from server.app import create_app
from server.embedded import free_port
from server.hub import RoomHub
from server.settings import Settings
from tests.accounts import funded
from tests.room_client import RoomClient, gift, live_room

WAIT_S = 30.0
VIEWERS = 1000


class _Server(uvicorn.Server):
    """uvicorn in the test's loop, leaving the test runner's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclasses.dataclass
class InProcess:
    url: str
    ws_url: str
    app: Starlette

    @property
    def hub(self) -> RoomHub:
        hub: RoomHub = self.app.state.hub
        return hub


@contextlib.asynccontextmanager
async def in_process_server(settings: Settings) -> AsyncIterator[InProcess]:
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="server.direct:RoomSocketProtocol",
        log_level="warning",
        lifespan="on",
        backlog=4096,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield InProcess(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(WAIT_S):
                await task


class Watcher(WebSocketClient):
    """A viewer that keeps the seqs of every events frame it reads."""

    def __init__(self, *, host: str, port: int, path: str) -> None:
        super().__init__(host=host, port=port, path=path)
        self.seqs: list[int] = []
        self.welcomed = asyncio.get_running_loop().create_future()

    def on_text(self, buf: bytes | bytearray, start: int, end: int, now: float) -> None:
        frame = orjson.loads(bytes(buf[start:end]))
        if frame["type"] == "welcome" and not self.welcomed.done():
            self.welcomed.set_result(None)
        elif frame["type"] == "events":
            self.seqs.extend(e["seq"] for e in frame["events"])


async def watchers(port: int, room_id: str, n: int) -> list[Watcher]:
    limit = asyncio.Semaphore(100)

    async def one() -> Watcher:
        async with limit:
            path = f"/ws/rooms/{room_id}"
            w = await ws_connect(
                lambda: Watcher(host="127.0.0.1", port=port, path=path),
                "127.0.0.1",
                port,
                timeout=WAIT_S,
            )
            async with asyncio.timeout(WAIT_S):
                await w.welcomed
            return w

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one()) for _ in range(n)]
    return [t.result() for t in tasks]


def enough_files(n: int) -> bool:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 500  # both ends of every socket are in this process
    if soft < want <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want


async def test_a_gift_is_acked_while_a_flush_of_thousands_of_sockets_is_under_way(
    settings: Settings,
) -> None:
    if not enough_files(VIEWERS):
        pytest.skip(f"needs {2 * VIEWERS + 500} open files")
    # One socket per slice: the flush of this room spans thousands of turns of the loop,
    # whatever this machine's speed, so "under way" does not depend on timing.
    sliced = dataclasses.replace(settings, fanout_slice_ms=0.0)
    async with (
        in_process_server(sliced) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http,
    ):
        _, room_id = await live_room(http)
        fan = await funded(http, "p100")
        port = int(server.url.rsplit(":", 1)[1])
        viewers = await watchers(port, room_id, VIEWERS)
        sender = await RoomClient.open(server.ws_url, room_id, token=fan.token)
        hub = server.hub
        try:
            assert hub.local_viewers(room_id) == VIEWERS + 1
            first = await sender.request(gift())
            assert first["type"] == "ack"
            # The first gift's event reaches the hub and its flush begins...
            async with asyncio.timeout(WAIT_S):
                while hub.flushing(room_id) != 1:
                    await asyncio.sleep(0)
            # ... and while it is being written, the next gift is debited and acked.
            second = await sender.request(gift())
            assert second == {"type": "ack", "request_id": second["request_id"], "coins": 98}
            assert hub.flushing(room_id) == 1
            # Every viewer gets both events, once, in order.
            async with asyncio.timeout(WAIT_S):
                while any(len(v.seqs) < 2 for v in viewers):
                    await asyncio.sleep(0.05)
            assert all(v.seqs == [1, 2] for v in viewers)
            await sender.until_seq(2)
        finally:
            await sender.close()
            for v in viewers:
                v.close()


async def test_the_hub_closes_sockets_with_the_code_it_is_asked_for(settings: Settings) -> None:
    # What a draining server does (1012), on real sockets: each is closed with the code.
    async with (
        in_process_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http,
    ):
        _, room_id = await live_room(http)
        clients = [await RoomClient.open(server.ws_url, room_id) for _ in range(3)]
        try:
            assert await server.hub.close_all(1012, "server restarting", batch=2) == 3
            codes = [await c.closed_with() for c in clients]
            assert codes == [1012] * 3
        finally:
            for c in clients:
                await c.close()
