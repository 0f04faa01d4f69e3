"""What an HTTP client may send (issue 12), over raw sockets to a real server: a body over
the limit is refused with 413 before it is read (and before any login), chunked bodies
are cut off at the limit, slow clients are dropped after the read timeout while idle
keep-alive clients are not, and clients that hang up mid-body leave no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import psutil
import pytest

from server.api import MAX_BODY_BYTES
from tests.live_server import LiveServer
from tests.room_client import RoomClient, live_room

READ_TIMEOUT_S = 1.0
WAIT_S = 15.0  # a bound, so that a broken server fails the test instead of hanging it
BIG = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(
        redis_url,
        log_dir=tmp_path_factory.mktemp("http-limit-logs"),
        env={"GS_HTTP_READ_TIMEOUT_S": str(READ_TIMEOUT_S)},
    ).start()
    yield live
    live.stop()


def server_log(server: LiveServer) -> str:
    assert server.log_path is not None
    return server.log_path.read_text()


@pytest.fixture
async def api(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


class Raw:
    """One raw TCP connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: LiveServer) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """Send; False once the server has closed its side."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """Read one response (with a Content-Length)."""
        async with asyncio.timeout(WAIT_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def closed(self) -> bytes:
        """Read until the server closes the connection; what it sent meanwhile."""
        data = b""
        async with asyncio.timeout(WAIT_S):
            with contextlib.suppress(ConnectionError):
                while chunk := await self.reader.read(65536):
                    data += chunk
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def post_head(path: str, *, length: int | None = None, extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n{extra}\r\n"
    ).encode()


def assert_too_large(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413, (status, body)
    assert headers["content-type"].startswith("application/json")
    answer = orjson.loads(body)
    assert answer["code"] == "too_large" and answer["message"]


@pytest.mark.parametrize("path", ["/api/users", "/api/wallet/recharge", "/api/rooms"])
async def test_a_declared_body_over_the_limit_is_413_before_it_is_read(
    server: LiveServer, path: str
) -> None:
    raw = await Raw.open(server)
    try:
        # Not one byte of the body is sent: the answer comes from the headers alone, and
        # before the login check (no Authorization header here).
        assert await raw.send(post_head(path, length=MAX_BODY_BYTES + 1))
        assert_too_large(*await raw.response())
        await raw.closed()  # and the connection is closed: the rest is not read
    finally:
        await raw.close()


async def test_a_body_at_the_limit_is_read(api: httpx.AsyncClient) -> None:
    body = b'{"name": "A", "birthdate": "1990-01-01", "region": "US"}'
    padded = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    r = await api.post("/api/users", content=padded, headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text


async def test_a_chunked_body_is_cut_off_at_the_limit(server: LiveServer) -> None:
    raw = await Raw.open(server)
    try:
        assert await raw.send(post_head("/api/users"))
        chunk = b"x" * 4096
        # Just past the limit, and never finished: the answer comes without the rest.
        # (Sending on after it would race the server's close: a reset could drop it.)
        for _ in range(MAX_BODY_BYTES // len(chunk) + 1):
            assert await raw.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        assert_too_large(*await raw.response())
        await raw.closed()
    finally:
        await raw.close()


async def push_body(server: LiveServer, *, chunked: bool) -> None:
    """Try to send a 64 MiB body to POST /api/users; stop when the server closes."""
    raw = await Raw.open(server)
    try:
        await raw.send(post_head("/api/users", length=None if chunked else BIG))
        piece = b"7" * (1024 * 1024)
        for _ in range(BIG // len(piece)):
            data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            if not await raw.send(data):
                break
        if chunked:
            await raw.send(b"0\r\n\r\n")
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await raw.response()
    finally:
        await raw.close()


async def test_huge_bodies_do_not_grow_the_servers_memory(server: LiveServer) -> None:
    process = psutil.Process(server.pid)
    await push_body(server, chunked=False)  # the first one warms up whatever is lazy
    before = process.memory_info().rss
    peak = before

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        # Three at once (the case), then chunked ones, which carry no length.
        await asyncio.gather(*(push_body(server, chunked=False) for _ in range(3)))
        await asyncio.gather(*(push_body(server, chunked=True) for _ in range(3)))
    finally:
        watcher.cancel()
    grown = peak - before
    assert grown < 16 * 1024 * 1024, f"the server grew by {grown / 2**20:.1f} MiB"


async def test_a_client_sending_half_its_headers_is_dropped(server: LiveServer) -> None:
    raw = await Raw.open(server)
    try:
        assert await raw.send(b"GET /api/gifts HTTP/1.1\r\nHost: test\r\nAccept: appl")
        answer = await raw.closed()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
        assert answer == b"" or b'"code":"timeout"' in answer
    finally:
        await raw.close()


async def test_a_client_trickling_its_body_is_dropped(server: LiveServer) -> None:
    raw = await Raw.open(server)
    try:
        body = b'{"name": "A", "birthdate": "1990-01-01", "region": "US"}'
        assert await raw.send(post_head("/api/users", length=len(body)))
        sent = 0
        # One byte every 0.2 s would take 11 s: the server stops listening long before.
        while sent < len(body) - 1 and await raw.send(body[sent : sent + 1]):
            sent += 1
            if raw.reader.at_eof() or raw.reader._buffer:  # noqa: SLF001 - an answer came
                break
            await asyncio.sleep(0.2)
        answer = await raw.closed()
        assert sent < len(body) - 1
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        await raw.close()


async def test_an_idle_keep_alive_client_is_not_dropped(server: LiveServer) -> None:
    raw = await Raw.open(server)
    try:
        request = b"GET /api/gifts HTTP/1.1\r\nHost: test\r\n\r\n"
        for idle in (READ_TIMEOUT_S * 1.5, 0):
            assert await raw.send(request)
            status, headers, body = await raw.response()
            assert status == 200 and orjson.loads(body)["gifts"]
            # Idle between requests for longer than a request may take to arrive.
            await asyncio.sleep(idle)
    finally:
        await raw.close()


async def test_a_slow_but_steady_request_within_the_timeout_is_served(server: LiveServer) -> None:
    raw = await Raw.open(server)
    try:
        request = b"GET /api/gifts HTTP/1.1\r\nHost: test\r\n\r\n"
        for i in range(0, len(request), 10):
            assert await raw.send(request[i : i + 10])
            await asyncio.sleep(READ_TIMEOUT_S / 20)
        status, _, _ = await raw.response()
        assert status == 200
    finally:
        await raw.close()


async def test_a_room_socket_outlives_the_read_timeout(
    server: LiveServer, api: httpx.AsyncClient
) -> None:
    _, room_id = await live_room(api)
    client = await RoomClient.open(server.ws_url, room_id)
    try:
        await asyncio.sleep(READ_TIMEOUT_S * 1.5)
        await client.send({"type": "ping"})
        assert await client.until_type("pong") == {"type": "pong"}
    finally:
        await client.close()


async def test_headers_over_the_limit_are_refused(server: LiveServer) -> None:
    raw = await Raw.open(server)
    try:
        await raw.send(b"GET /api/gifts HTTP/1.1\r\nHost: test\r\n")
        line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
        for _ in range(200):
            if not await raw.send(line):
                break
        answer = await raw.closed()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    finally:
        await raw.close()
    # A large but reasonable header still passes.
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.get("/api/gifts", headers={"Cookie": "c=" + "v" * 8000})
        assert r.status_code == 200


def aborted(metrics_text: str, reason: str) -> float:
    pattern = rf'^giftstream_http_requests_aborted_total\{{reason="{reason}"\}} (\S+)$'
    match = re.search(pattern, metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_clients_that_hang_up_mid_body_leave_no_traceback(
    server: LiveServer, api: httpx.AsyncClient
) -> None:
    start = aborted((await api.get("/metrics")).text, "client_disconnected")
    hangups = 20
    for _ in range(hangups):
        raw = await Raw.open(server)
        await raw.send(post_head("/api/users", length=1000) + b'{"name": "A", ')
        await asyncio.sleep(0.01)  # the request reached the app, which reads its body
        await raw.close()
    async with asyncio.timeout(WAIT_S):
        while aborted((await api.get("/metrics")).text, "client_disconnected") < start + hangups:
            await asyncio.sleep(0.1)
        # The counts of the last second are logged a second later at most.
        while "client_disconnected" not in server_log(server):
            await asyncio.sleep(0.1)
    log = server_log(server)
    assert "Traceback" not in log, log[-3000:]
    lines = [line for line in log.splitlines() if "client_disconnected" in line]
    # Logged, but not once per hangup: at most a line a second, each with its count.
    assert 1 <= len(lines) < hangups, lines
