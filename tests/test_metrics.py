"""/metrics speaks the Prometheus text format and counts what moved."""

from __future__ import annotations

import asyncio
import platform
import re
import time
from importlib import metadata

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.accounts import funded
from tests.live_server import LiveServer
from tests.room_client import close_code_of


def samples(text: str) -> dict[str, float]:
    return {
        s.name + (str(sorted(s.labels.items())) if s.labels else ""): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_recharges_and_live_rooms(http: httpx.AsyncClient) -> None:
    before = samples((await http.get("/metrics")).text)
    account = await funded(http, "p500")
    r = await http.post("/api/rooms", json={"title": "metrics"}, headers=account.headers)
    assert r.status_code == 201
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = samples(r.text)
    assert (
        after["giftstream_coins_recharged_total"]
        - before.get("giftstream_coins_recharged_total", 0)
        == 500
    )
    assert after["giftstream_rooms_live"] >= 1
    assert "giftstream_gift_ack_seconds_count" in after


async def test_http_requests_are_counted_by_route_template_and_status(
    http: httpx.AsyncClient,
) -> None:
    for room_id in ("nope-1", "nope-2"):
        assert (await http.get(f"/api/rooms/{room_id}")).status_code == 404
    assert (await http.get("/no/such/path")).status_code == 404
    after = samples((await http.get("/metrics")).text)
    key = "giftstream_http_requests_total"
    one_room = f"{key}[('method', 'GET'), ('route', '/api/rooms/{{room_id}}'), ('status', '404')]"
    assert after[one_room] >= 2  # one series for every room, not one a room
    assert not any("nope-1" in name for name in after)
    assert after[f"{key}[('method', 'GET'), ('route', 'unmatched'), ('status', '404')]"] >= 1
    timed = "giftstream_http_request_seconds_count"
    assert after[f"{timed}[('method', 'GET'), ('route', '/api/rooms/{{room_id}}')]"] >= 2


async def test_websocket_close_codes_are_counted(
    http: httpx.AsyncClient, live_server: LiveServer
) -> None:
    def closes(text: str) -> float:
        return samples(text).get("giftstream_websocket_closes_total[('code', '4404')]", 0)

    before = closes((await http.get("/metrics")).text)
    assert await close_code_of(live_server.ws_url, "/ws/rooms/no-such-room") == 4404
    # Counted once the connection is gone on the server's side too.
    deadline = time.monotonic() + 15
    while (after := closes((await http.get("/metrics")).text)) == before:
        assert time.monotonic() < deadline, "the close was never counted"
        await asyncio.sleep(0.1)
    assert after == before + 1


async def test_build_info_names_the_version_python_and_redis(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 15
    while True:
        infos = [
            s.labels
            for family in text_string_to_metric_families((await http.get("/metrics")).text)
            for s in family.samples
            if s.name == "giftstream_build_info"
        ]
        if infos or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(infos) == 1, infos
    info = infos[0]
    assert info["version"] == metadata.version("giftstream")
    assert info["python"] == platform.python_version()
    assert re.fullmatch(r"(redis|valkey) \d+\.\d+\.\d+", info["redis"]), info
