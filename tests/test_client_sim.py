"""The viewer bot: its pure parts as plain functions, and the real command against a
real server (the `server_url` fixture), checked through the summary it writes; once
through a TCP proxy that cuts every room socket again and again."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from client_sim.gifts import GiftInfo, GiftPicker
from client_sim.stats import LatencyHistogram
from giftstream_client.rest import GiftstreamClient
from tests.live_server import LiveServer
from tests.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parent.parent

# --- pure parts ------------------------------------------------------------------------


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


def bot_command(summary_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "client_sim", *args, "--summary-json", str(summary_path)]


def run_bot(tmp_path: Path, *args: str, timeout: float = 90.0) -> tuple[dict[str, Any], str]:
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        bot_command(summary_path, *args), cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
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
    assert gifts["refused"] == {}, "the bot stays under the server's limits"
    assert gifts["acked"] + gifts["unanswered"] == gifts["sent"]
    assert gifts["unanswered"] == 0, "every gift in flight is answered before the bot leaves"
    # Every viewer sees every event of its room once, in order.
    assert events["seq_gaps"] == 0
    assert events["seq_duplicates"] == 0
    assert events["by_kind"]["gift"] >= gifts["acked"]
    # Every gift event received was timed, from its server time.
    broadcast = summary["broadcast_latency_ms"]
    assert broadcast["count"] == events["by_kind"]["gift"]
    assert 0 <= broadcast["p50"] <= broadcast["p99"] <= broadcast["max"]
    assert summary["ack_latency_ms"]["count"] == gifts["acked"]
    # The limits it paced itself under are the ones the server's welcome named.
    assert summary["limits"]["from_server"] and summary["limits"]["gift_per_s"] > 0
    # The live feed showed gifts, and the summary was printed.
    assert " sent " in stdout
    assert "client_sim summary" in stdout


async def test_bot_survives_any_number_of_drops_and_misses_nothing(
    live_server: LiveServer, server_url: str, tmp_path: Path
) -> None:
    """Every room socket is cut ten times (the old bot quit for good after six closes):
    each viewer comes back with since=<last seq>, sees every event once, and stays."""
    async with GiftstreamClient(server_url) as api:
        room_id = await api.create_room(await api.sign_up("Host"), "joined by bots")
    summary_path = tmp_path / "summary.json"
    async with TcpProxy(live_server.port) as proxy:
        bot = await asyncio.create_subprocess_exec(
            *bot_command(summary_path, "--url", proxy.url, "--room", room_id,
                         "--viewers", "5", "--duration", "9", "--gift-rate", "2", "--quiet"),
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(90):
                cuts = 0
                while cuts < 10:
                    await asyncio.sleep(0.6)
                    if proxy.cut(only_path=b"/ws/"):
                        cuts += 1
                output, _ = await bot.communicate()
        finally:
            if bot.returncode is None:
                bot.kill()
                await bot.wait()
    assert bot.returncode == 0, output.decode()
    summary = json.loads(summary_path.read_text())
    viewers, gifts, events = summary["viewers"], summary["gifts"], summary["events"]
    assert summary["rooms"] == [room_id]
    assert viewers["connected"] == 5 and viewers["gave_up"] == 0
    assert viewers["reconnects_max"] >= 7, viewers
    assert events["seq_gaps"] == 0 and events["seq_duplicates"] == 0
    assert gifts["acked"] > 0
    assert gifts["acked"] + sum(gifts["refused"].values()) + gifts["unanswered"] == gifts["sent"]
    assert b" sent " not in output  # --quiet: the summary only
    # It does not end a room it did not open.
    state = httpx.get(f"{server_url}/api/rooms/{room_id}").json()
    assert state["status"] == "live"
    assert state["totals"]["gift_count"] >= gifts["acked"]


def test_bot_refuses_an_unknown_room(server_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "client_sim", "--url", server_url, "--room", "nope",
         "--viewers", "2", "--duration", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "404" in done.stderr and "Traceback" not in done.stderr


def test_bot_without_a_server_says_so_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "client_sim", "--url", "http://127.0.0.1:9", "--viewers", "2",
         "--duration", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "client_sim: cannot reach http://127.0.0.1:9: connection refused (is the server running?)"
    ]
