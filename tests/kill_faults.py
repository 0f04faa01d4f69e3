"""A server process killed (SIGKILL) right after each step of the gift saga, with real
processes, sockets and Redis: what the kill test and the fault campaign share.

The step after the kill point is made to fail by the ACL (so the process is sure to
have stopped right there), the process is killed, the ACL restored, and a new process's
sweeper must finish every gift: shown once and credited once, nothing lost.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from server.auth import issue_token
from server.services import Services
from server.store.survey import StoreSurvey
from tests.faults import (
    DENY_CREDIT,
    DENY_PUBLISH,
    DENY_SETTLE,
    FaultyRedis,
    Tally,
    fault_settings,
    tally_gifts,
)
from tests.gifting import new_room, new_user
from tests.live_server import TEST_SECRET, LiveServer
from tests.room_client import RoomClient, gift

# Kill the process right after this step (the next one is refused until then).
KILL_POINTS = ("debit", "publish", "credit", "settle")
_BLOCK_NEXT: dict[str, tuple[str, ...]] = {
    "debit": DENY_PUBLISH,
    "publish": DENY_CREDIT,
    "credit": DENY_SETTLE,
    "settle": ("~*",),  # nothing left to refuse
}


async def _wait_for(what: str, check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"waited {timeout_s:g} s for {what}")


async def kill_after(folder: Path, point: str, *, gifts: int) -> Tally:
    """`gifts` gifts acked by server A, A killed right after `point`, then server B on the
    same Redis; returns the tally once B's sweeper has finished what A left."""
    tally = Tally(f"kill -9 after {point}")
    faulty = await FaultyRedis(folder / "redis").start()
    services = Services.build(fault_settings(faulty.url))
    env = {"GS_SWEEP_MIN_AGE_MS": "300", "GS_GIFT_RATE_PER_S": "1000", "GS_GIFT_BURST": "1000"}
    try:
        sender = await new_user(services, 1000)
        room = await new_room(services)
        survey = StoreSurvey(services.redis, services.settings)
        await faulty.acl(*_BLOCK_NEXT[point])
        a = LiveServer(faulty.url, log_dir=folder / "logs", env=env).start()
        try:
            token = issue_token(sender, secret=TEST_SECRET, ttl_s=600)
            client = await RoomClient.open(a.ws_url, room.room_id, token=token)
            try:
                for _ in range(gifts):
                    tally.gifts += 1
                    answer = await client.request(gift())
                    tally.acked += answer["type"] == "ack"
            finally:
                await client.close()

            async def reached() -> bool:
                pending = await survey.pending()
                if point == "debit":
                    return len(pending) == tally.acked
                if point == "publish":
                    return sum(p.decision == "shown" for p in pending) == tally.acked
                if point == "credit":
                    return sum(p.credited for p in pending) == tally.acked
                return not pending

            await _wait_for(f"the steps up to {point}", reached)
        finally:
            a.kill()
        await faulty.allow_all()
        with LiveServer(faulty.url, log_dir=folder / "logs", env=env):

            async def swept() -> bool:
                return not await survey.pending()

            await _wait_for("the new process's sweeper", swept)
        await tally_gifts(services, tally)
    finally:
        await services.close()
        await faulty.stop()
    return tally
