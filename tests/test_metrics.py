"""/metrics speaks the Prometheus text format and counts what moved."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.accounts import funded


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
