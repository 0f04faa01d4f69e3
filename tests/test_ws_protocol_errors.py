"""Protocol errors from clients keep the logs readable: invalid UTF-8 in a text frame
(1007) and bad framing (1002) close the connection, are counted in /metrics by kind, and
are logged at most once a second in one line, never with a traceback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.wire import WebSocketClient
from bench.wire import connect as ws_connect
from tests.live_server import LiveServer
from tests.room_client import live_room

WAIT_S = 15.0


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # A server of its own, so its log holds this test's errors only.
    live = LiveServer(redis_url, log_dir=tmp_path_factory.mktemp("protocol-errors")).start()
    try:
        yield live
    finally:
        live.stop()


class Peer(WebSocketClient):
    def on_text(self, buf: bytes | bytearray, start: int, end: int, now: float) -> None:
        pass


async def protocol_errors(http: httpx.AsyncClient, kind: str) -> float:
    text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "giftstream_ws_protocol_errors_total" and sample.labels == {
                "kind": kind
            }:
                return float(sample.value)
    return 0.0


async def misbehave(server: LiveServer, room_id: str, wire: bytes) -> int | None:
    """Connect, write `wire` as it is, and return the close code the server sent."""
    path = f"/ws/rooms/{room_id}"
    peer = await ws_connect(
        lambda: Peer(host="127.0.0.1", port=server.port, path=path),
        "127.0.0.1",
        server.port,
        timeout=WAIT_S,
    )
    assert peer.transport is not None
    peer.transport.write(wire)
    async with asyncio.timeout(WAIT_S):
        await peer.closed
    return peer.close_code


def masked_text(payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + key + body


async def test_protocol_errors_are_counted_and_logged_once_a_second_without_traceback(
    server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        await _misbehaving_clients(http, server)


async def _misbehaving_clients(http: httpx.AsyncClient, live_server: LiveServer) -> None:
    assert live_server.log_path is not None
    _, room_id = await live_room(http)
    utf8_before = await protocol_errors(http, "invalid_utf8")
    framing_before = await protocol_errors(http, "bad_framing")
    log_start = live_server.log_path.stat().st_size
    started = time.monotonic()
    invalid = masked_text(b'{"type":"ping","x":"\xff\xfe"}')
    unmasked = b"\x81\x02hi"
    async with asyncio.TaskGroup() as tg:
        utf8 = [tg.create_task(misbehave(live_server, room_id, invalid)) for _ in range(30)]
        framing = [tg.create_task(misbehave(live_server, room_id, unmasked)) for _ in range(10)]
    assert [t.result() for t in utf8] == [1007] * 30
    assert [t.result() for t in framing] == [1002] * 10
    assert await protocol_errors(http, "invalid_utf8") - utf8_before == 30
    assert await protocol_errors(http, "bad_framing") - framing_before == 10
    await asyncio.sleep(1.5)  # the last second's line is written by then
    elapsed = time.monotonic() - started
    with live_server.log_path.open("rb") as log:
        log.seek(log_start)
        written = log.read().decode(errors="replace")
    assert "Traceback" not in written and "Invalid UTF-8" not in written
    lines = [line for line in written.splitlines() if "websocket protocol errors" in line]
    assert 1 <= len(lines) <= elapsed + 1
    reported = sum(int(part.split()[0]) for line in lines for part in _counts(line))
    assert reported == 40  # every error is in some line


def _counts(line: str) -> list[str]:
    # "...: 12 bad_framing, 28 invalid_utf8 (latest from 127.0.0.1:5555); closed"
    listed = line.split("websocket protocol errors from clients: ", 1)[1].split(" (", 1)[0]
    return [part.strip() for part in listed.split(",")]
