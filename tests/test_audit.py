"""The audit on a store of its own: it holds after real gifts and refunds, and catches a
gift debited but never shown, shown twice, credited twice, or stuck pending; it exits 2
with one line when it cannot check."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.audit import audit
from server.embedded import EmbeddedRedis, free_port
from server.services import Services
from server.settings import Settings
from server.store.keys import RoomKeys
from tests.gifting import Gifting, gifting, new_room, new_user
from tests.live_server import TEST_SECRET


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[Services, Gifting]]:
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        services = Services.build(Settings(redis_url=redis_server.url, token_secret=TEST_SECRET))
        try:
            async with gifting(services) as g:
                yield services, g
        finally:
            await services.close()


async def test_audit_holds_after_gifts_and_refunds_and_finds_a_gift_never_shown(
    store: tuple[Services, Gifting],
) -> None:
    services, g = store
    sender = await new_user(services, 1000)
    room, ended = await new_room(services), await new_room(services)
    for _ in range(3):
        await g.send(sender, room, "doughnut")
    await services.rooms.end(ended.room_id, user_id=ended.creator_id)
    await g.send(sender, ended, "doughnut")  # debited, then refunded
    report = await audit(services.redis, services.settings)
    assert report.ok, report.lines()
    assert (report.gifts, report.gifts_refunded) == (4, 1)

    # One gift's event vanishes from its room's history (not the oldest: that one could
    # have been trimmed by the cap): debited, credited, never shown.
    events = RoomKeys(room.room_id).events
    middle_id, entry = (await services.redis.xrange(events, count=2))[1]
    await services.redis.xdel(events, middle_id)
    report = await audit(services.redis, services.settings)
    assert not report.ok
    transfer_id = entry[b"t"].decode()
    assert any(transfer_id in b and "shown 0 times" in b for b in report.breaches), report.breaches

    # Shown twice.
    await services.redis.xadd(events, {"e": entry[b"e"], "t": entry[b"t"]})
    await services.redis.xadd(events, {"e": entry[b"e"], "t": entry[b"t"]})
    report = await audit(services.redis, services.settings)
    assert any(transfer_id in b and "shown 2 times" in b for b in report.breaches), report.breaches


async def test_audit_reports_a_transfer_stuck_pending(store: tuple[Services, Gifting]) -> None:
    services, g = store
    sender = await new_user(services, 100)
    room = await new_room(services)
    await g.stop()  # no finisher: the transfer stays pending, as after a crash
    await g.send(sender, room, "rose", finish=False)
    report = await audit(services.redis, services.settings)
    assert report.ok and report.pending_transfers == 1, report.lines()
    report = await audit(services.redis, services.settings, stuck_after_s=0)
    assert [b for b in report.breaches if "pending for" in b], report.breaches


def test_audit_exits_2_with_one_line_when_redis_is_unreachable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "server.audit", "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "could not check" in done.stderr and len(done.stderr.strip().splitlines()) == 1
