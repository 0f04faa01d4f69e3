"""Who may do what on a room socket, enforced for every connection of a user (issue 12):
a suspension reaches sockets opened before it, one account cannot open sockets without
end, and a browser page of another site cannot open one with the user's identity."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.accounts import funded
from tests.live_server import LiveServer
from tests.room_client import WAIT_S, RoomClient, chat, fence, gift, live_room


@pytest.fixture(scope="module")
def capped_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"GS_MAX_SOCKETS_PER_USER": "3", "GS_ALLOWED_ORIGINS": "https://app.example"}
    server = LiveServer(redis_url, log_dir=tmp_path_factory.mktemp("capped"), env=env).start()
    try:
        yield server
    finally:
        server.stop()


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.admin", *args], capture_output=True, text=True, timeout=60
    )


async def test_a_suspension_reaches_a_socket_opened_before_it(
    http: httpx.AsyncClient, live_server: LiveServer, redis_url: str
) -> None:
    _, room_id = await live_room(http)
    fan = await funded(http, "p100")
    client = await RoomClient.open(live_server.ws_url, room_id, token=fan.token)
    try:
        await fence(client)  # a chat line posted and seen: the account may chat
        # The operator suspends the account while its socket is open.
        done = admin("suspend", fan.user_id, "--redis-url", redis_url)
        assert done.returncode == 0, done.stderr
        refused = await client.request(chat("still here?"))
        assert (refused["type"], refused["code"]) == ("error", "forbidden")
        refused = await client.request(gift())
        assert (refused["type"], refused["code"]) == ("error", "forbidden")
    finally:
        await client.close()
    assert admin("reinstate", fan.user_id, "--redis-url", redis_url).returncode == 0
    assert admin("suspend", "u-nobody", "--redis-url", redis_url).returncode == 1


async def closed_with(url: str, **options: object) -> int | None:
    async with connect(url, open_timeout=WAIT_S, **options) as conn:  # type: ignore[arg-type]
        try:
            while True:
                await conn.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None


async def test_one_account_opens_at_most_the_cap_of_sockets(capped_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=capped_server.url, timeout=15) as http:
        _, room_id = await live_room(http)
        fan = await funded(http, "p100")
    url = capped_server.ws_url
    opened = [await RoomClient.open(url, room_id, token=fan.token) for _ in range(3)]
    try:
        assert await closed_with(f"{url}/ws/rooms/{room_id}?token={fan.token}") == 4429
        # Watching without a token is not counted against anyone.
        watcher = await RoomClient.open(url, room_id)
        await watcher.close()
        await opened.pop().close()
        again = None
        for _ in range(50):  # the close is counted once the server has seen it
            try:
                again = await RoomClient.open(url, room_id, token=fan.token)
                break
            except (AssertionError, ConnectionClosed):
                continue
        assert again is not None
        opened.append(again)
    finally:
        for client in opened:
            await client.close()


async def test_a_browser_page_of_another_origin_cannot_open_a_socket(
    capped_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=capped_server.url, timeout=15) as http:
        _, room_id = await live_room(http)
        fan = await funded(http, "p100")
    path = f"{capped_server.ws_url}/ws/rooms/{room_id}?token={fan.token}"
    assert await closed_with(path, origin="https://evil.example") == 4403
    for allowed in ("https://app.example", None):  # the allowed one, and none (an app)
        client = await RoomClient.open(
            capped_server.ws_url, room_id, token=fan.token, origin=allowed
        )
        assert client.welcome["you"]["user_id"] == fan.user_id
        await client.close()


async def test_by_default_only_the_servers_own_origin_may(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    _, room_id = await live_room(http)
    path = f"{live_server.ws_url}/ws/rooms/{room_id}"
    assert await closed_with(path, origin="https://evil.example") == 4403
    client = await RoomClient.open(live_server.ws_url, room_id, origin=live_server.url)
    await client.close()
