"""The viewer bot: its pure parts as plain functions, and the real command against a
real server (the `server_url` fixture), checked through the summary it writes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from client_sim.broadcast import BroadcastTimer, SentGifts
from client_sim.gifts import GiftInfo, GiftPicker
from client_sim.pacing import TokenGate
from client_sim.stats import LatencyHistogram

REPO = Path(__file__).resolve().parent.parent

# --- pure parts ------------------------------------------------------------------------


def test_sender_matches_its_own_events_in_order_skipping_refusals() -> None:
    sent = SentGifts()
    sent.sent("a", 1.0)
    sent.sent("b", 2.0)
    sent.sent("c", 3.0)
    sent.refused("b")
    assert sent.own_event() == ("a", 1.0)
    assert sent.own_event() == ("c", 3.0)
    assert sent.own_event() is None


def test_sender_forgets_gifts_too_old_to_arrive() -> None:
    sent = SentGifts(keep_s=10.0)
    sent.sent("old", 0.0)
    sent.sent("new", 20.0)
    assert sent.own_event() == ("new", 20.0)


def test_timer_answers_receipts_before_and_after_the_sender_knows() -> None:
    timer = BroadcastTimer()
    # A viewer receives (room r, seq 7) before the sender saw its own copy: parked.
    assert timer.received("r", 7, 10.050) is None
    assert timer.pending() == 1
    # The sender learns seq 7 was its send at 10.0: the parked receipt is answered.
    assert timer.sent("r", 7, 10.0, 10.060) == pytest.approx([0.050])
    assert timer.pending() == 0
    # Later receipts are answered at once; other rooms are other events.
    assert timer.received("r", 7, 10.070) == pytest.approx(0.070)
    assert timer.received("other", 7, 10.070) is None


def test_timer_counts_receipts_that_never_find_their_sender() -> None:
    timer = BroadcastTimer(keep_s=5.0)
    assert timer.received("r", 1, 100.0) is None
    assert timer.received("r", 1, 100.1) is None
    timer.received("r", 2, 110.0)  # expiry runs on the way
    assert timer.unmatched == 2
    assert timer.pending() == 1


def test_histogram_percentiles_are_within_two_percent() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 1001):
        histogram.record(ms / 1000.0)
    for p, expected in ((50, 0.500), (95, 0.950), (99, 0.990)):
        value = histogram.percentile(p)
        assert value is not None
        assert value == pytest.approx(expected, rel=0.02)
    assert histogram.max_s == pytest.approx(1.0)
    assert LatencyHistogram().percentile(50) is None


def test_gate_stays_under_the_server_limit() -> None:
    gate = TokenGate.under(20.0, 50)
    now = 1000.0
    gate._at = now  # a fresh bucket, on a clock of our own
    sent = 0
    t = now
    while t < now + 10.0:
        delay = gate.delay(t)
        if delay == 0:
            sent += 1
        else:
            t += delay
    # 10 s at the server's 20/s plus its burst of 50 is the most it would accept.
    assert sent <= 20 * 10 + 50


def test_picker_never_picks_what_the_viewer_cannot_afford() -> None:
    picker = GiftPicker(
        [GiftInfo("rose", "Rose", 1), GiftInfo("corgi", "Corgi", 299), GiftInfo("u", "U", 34999)]
    )
    rng = random.Random(1)
    assert picker.pick(rng, 0) is None
    cheap = [picker.pick(rng, 10) for _ in range(50)]
    assert {g.gift_id for g in cheap if g is not None} == {"rose"}
    assert None not in cheap
    picks = [picker.pick(rng, 10**6) for _ in range(2000)]
    ids = [g.gift_id for g in picks if g is not None]
    assert ids.count("rose") > ids.count("corgi") > ids.count("u")


# --- the command against a real server -------------------------------------------------


def run_bot(tmp_path: Path, *args: str, timeout: float = 90.0) -> tuple[dict[str, Any], str]:
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "client_sim", *args, "--summary-json", str(summary_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(summary_path.read_text()), done.stdout


def test_bot_fills_its_own_rooms_and_measures_them(server_url: str, tmp_path: Path) -> None:
    summary, stdout = run_bot(
        tmp_path,
        "--url", server_url,
        "--viewers", "12",
        "--rooms", "2",
        "--duration", "4",
        "--gift-rate", "3",
        "--chat-rate", "0.5",
        "--anonymous-share", "0.25",
        "--seed", "7",
    )  # fmt: skip
    viewers, gifts, events = summary["viewers"], summary["gifts"], summary["events"]
    assert viewers["connected"] == 12
    assert viewers["anonymous"] == 3
    assert viewers["connect_failures"] == {}
    assert gifts["sent"] > 20
    assert gifts["refused"] == {}, "the bot stays under the per-connection limits"
    assert gifts["acked"] + gifts["unanswered"] == gifts["sent"]
    assert gifts["unanswered"] == 0, "every gift in flight is answered before the bot leaves"
    # Every viewer sees every event of its room once, in order.
    assert events["seq_gaps"] == 0
    assert events["seq_duplicates"] == 0
    assert events["by_kind"]["gift"] >= gifts["acked"]
    # Every gift event came from a bot of this process, so each receipt was timed.
    broadcast = summary["broadcast_latency_ms"]
    assert broadcast["count"] == events["by_kind"]["gift"]
    assert broadcast["unmatched"] == 0
    assert 0 <= broadcast["p50"] <= broadcast["p99"] <= broadcast["max"]
    assert summary["ack_latency_ms"]["count"] == gifts["acked"]
    # The live feed showed gifts, and the summary was printed.
    assert " sent " in stdout
    assert "client_sim summary" in stdout


def test_bot_joins_an_existing_room_quietly(server_url: str, tmp_path: Path) -> None:
    creator = httpx.post(
        server_url + "/api/users",
        json={"name": "Host", "birthdate": "1990-01-01", "region": "US"},
    ).json()
    room = httpx.post(
        server_url + "/api/rooms",
        json={"title": "joined by bots"},
        headers={"Authorization": f"Bearer {creator['token']}"},
    ).json()
    summary, stdout = run_bot(
        tmp_path,
        "--url", server_url,
        "--room", room["room_id"],
        "--viewers", "5",
        "--duration", "3",
        "--gift-rate", "2",
        "--quiet",
    )  # fmt: skip
    assert summary["rooms"] == [room["room_id"]]
    assert summary["viewers"]["connected"] == 5
    assert summary["gifts"]["acked"] > 0
    assert " sent " not in stdout  # --quiet: the summary only
    # It does not end a room it did not open.
    state = httpx.get(f"{server_url}/api/rooms/{room['room_id']}").json()
    assert state["status"] == "live"
    assert state["totals"]["gift_count"] >= summary["gifts"]["acked"]


def test_bot_refuses_an_unknown_room(server_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "client_sim", "--url", server_url, "--room", "nope",
         "--viewers", "2", "--duration", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "404" in done.stderr
