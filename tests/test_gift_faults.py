"""The gift saga through real Redis faults (issue 9): a fault between the debit and the
steps after it, the sweeper during the fault, then the fault lifted: every debited gift
ends shown once and credited once, or refunded; nothing is left pending; the audit holds.
And a server killed with SIGKILL right after each step, finished by the next one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.errors import REFUSALS
from server.protocol import GiftFrame
from server.services import Services
from server.store.survey import StoreSurvey
from tests.faults import (
    FAULTS,
    Fault,
    FaultyRedis,
    Tally,
    faulty_services,
    make_world,
    sweep_until_done,
    tally_gifts,
)
from tests.gifting import gifting
from tests.kill_faults import KILL_POINTS, kill_after

LUA = Path(__file__).resolve().parent.parent / "server" / "store" / "lua"


@pytest.fixture
async def faulty(tmp_path: Path) -> AsyncIterator[tuple[FaultyRedis, Services]]:
    """A Redis of this test's own: a fault's damage, if any, stays with its test."""
    async with faulty_services(tmp_path / "redis") as pair:
        yield pair


async def pending_count(services: Services) -> int:
    return len(await StoreSurvey(services.redis, services.settings).pending())


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_a_fault_between_debit_and_steps_loses_nothing(
    faulty: tuple[FaultyRedis, Services], fault: Fault
) -> None:
    redis, services = faulty
    world = await make_world(services, senders=2, rooms=2, coins=1000)
    live, ending = world.rooms
    async with gifting(services, start=False) as g:
        senders = [await services.wallets.profile(s) for s in world.senders]
        frames = [
            (
                sender,
                room,
                GiftFrame(
                    f"{fault.name}-{sender.user_id}-{room.room_id}-{n}",
                    g.services.catalog.gift("doughnut"),
                    1,
                ),
            )
            for sender in senders
            for room in (live, ending)
            for n in range(3)
        ]
        sends = [asyncio.ensure_future(g.commands.gift(s, r, f)) for s, r, f in frames]
        if fault.cancels:
            # Each send is in flight (its debit made, not answered): the socket goes away.
            await asyncio.sleep(0)
            for send in sends:
                send.cancel()
        results = await asyncio.gather(*sends, return_exceptions=True)
        # The room ends between the debits and their steps: its gifts must be refunded.
        await services.rooms.end(ending.room_id, user_id=ending.creator_id)
        debited = 0
        while debited < len(frames):  # a cancelled send's debit still runs
            debited = await pending_count(services)
            await asyncio.sleep(0.01)
        assert all(isinstance(r, int | asyncio.CancelledError) for r in results), results

        await fault.toggle(redis, world, True)
        g.start()
        await g.finished()
        left = await pending_count(services)
        if fault.name not in ("script cache flushed", "task cancelled"):
            assert left > 0  # the fault bit: those transfers wait, nothing was lost
            # A sweep while the fault lasts destroys nothing.
            await g.commands.sweeper.sweep(min_age_ms=0)
            assert await pending_count(services) == left
        else:
            assert left == 0  # no sweeper needed: the steps ran to the end by themselves
        await fault.toggle(redis, world, False)
        await sweep_until_done(g)
    tally = Tally(fault.name)
    await tally_gifts(services, tally)
    assert tally.audit_ok, tally.breaches
    assert (tally.lost, tally.shown_twice, tally.credited_twice, tally.pending_left) == (0, 0, 0, 0)
    refunds = [
        e
        for s in world.senders
        for e in (await services.wallets.transactions(s, limit=20, before=None))[0]
        if e["kind"] == "gift_refunded"
    ]
    assert len(refunds) == 6  # every gift to the room that ended, once
    for sender in world.senders:
        assert (await services.wallets.wallet(sender))["coins"] == 1000 - 3 * 30


@pytest.mark.parametrize("point", KILL_POINTS)
async def test_a_process_killed_right_after_a_step_loses_nothing(
    tmp_path: Path, point: str
) -> None:
    tally = await kill_after(tmp_path, point, gifts=5)
    assert tally.acked == 5
    assert tally.audit_ok, tally.breaches
    assert (tally.lost, tally.shown_twice, tally.credited_twice, tally.pending_left) == (0, 0, 0, 0)


def test_every_code_a_script_can_refuse_with_is_a_known_refusal() -> None:
    codes = set()
    for path in LUA.glob("*.lua"):
        codes |= set(re.findall(r"refuse\('([a-z_]+)'", path.read_text()))
    assert codes and codes <= REFUSALS.keys(), codes - REFUSALS.keys()
    # And every script answers in the one style: ok(), refuse(), fault() or a replay.
    for path in LUA.glob("*.lua"):
        if path.name.startswith("_"):
            continue
        for line in path.read_text().splitlines():
            returned = re.match(r"\s*return (.+)$", line)
            if returned:
                assert re.match(r"(ok|refuse|fault)\(|[a-z_]+$", returned.group(1)), (path, line)
