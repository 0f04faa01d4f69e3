"""Faults injected into a real Redis, and gift storms run through them: what the fault
tests (tests/test_gift_faults.py) and the fault campaign share.

    .venv/bin/python -m tests.faults [--gifts 2000] [--senders 16] [--seed 1]

runs every fault kind against a Redis of its own and prints one table:
fault | gifts | acked | lost | shown twice | refunded | audit.

Every fault is a real one: a Redis at its memory limit (`maxmemory` with noeviction), an
ACL that denies what one step needs, a key of the wrong type for a moment, the script
cache flushed, the sending task cancelled while its gift is in flight, and (with real
server processes) a kill -9 right after each step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from server import metrics
from server.audit import audit
from server.embedded import EmbeddedRedis
from server.errors import Refusal, Unavailable
from server.room_commands import LiveRoom
from server.services import Services
from server.settings import Settings
from server.store.keys import RoomKeys, UserKeys
from server.store.survey import StoreSurvey
from tests.gifting import Gifting, gifting, new_room, new_user
from tests.live_server import TEST_SECRET

SERVER_USER = "giftstream"
SERVER_PASSWORD = "fault-test-password"
# ACL rules that refuse one step's command inside its script, not the script itself:
# its declared keys stay allowed, so the script's own check (`redis.acl_check_cmd`, before
# any write) is what finds the denial.
# The credit: SET only on rooms' keys (the credit's once-marker is a wallet bucket's).
DENY_CREDIT = ("~*", "-set", "(~gs:{r* +set)")
# The publish: ZINCRBY (top gifters) is the publish's alone.
DENY_PUBLISH = ("~*", "-zincrby")
# The settle: HDEL of the pending entry.
DENY_SETTLE = ("~*", "-hdel")


class FaultyRedis:
    """A Redis of the caller's own (never one it did not start), with a restricted ACL
    user for the server (`url`) and an admin connection that injects the faults."""

    def __init__(self, folder: Path) -> None:
        self.server = EmbeddedRedis(folder)
        self.admin: Redis | None = None

    async def start(self) -> FaultyRedis:
        self.server.start()
        self.admin = Redis.from_url(self.server.url)
        await self.admin.config_set("maxmemory-policy", "noeviction")
        await self.allow_all()
        return self

    async def stop(self) -> None:
        if self.admin is not None:
            await self.admin.aclose()
        self.server.stop()

    @property
    def url(self) -> str:
        """The server's connection: as the restricted user."""
        host_port = self.server.url.removeprefix("redis://")
        return f"redis://{SERVER_USER}:{SERVER_PASSWORD}@{host_port}"

    def _admin(self) -> Redis:
        assert self.admin is not None
        return self.admin

    async def acl(self, *rules: str) -> None:
        await self._admin().execute_command(
            "ACL",
            "SETUSER",
            SERVER_USER,
            "reset",
            "on",
            f">{SERVER_PASSWORD}",
            "+@all",
            "&*",
            *rules,
        )

    async def allow_all(self) -> None:
        await self.acl("~*")

    async def memory_full(self, on: bool) -> None:
        # Any use is over a 1-byte limit: every write command and script is refused (OOM);
        # reads, and deletes, still run.
        await self._admin().config_set("maxmemory", "1" if on else "0")

    async def wrong_type(self, key: str, on: bool) -> None:
        """`key` holds a string for a while (its real value set aside, then put back)."""
        admin = self._admin()
        aside = key + ":aside-for-fault"
        if on == bool(await admin.exists(aside)):
            return  # already so
        async with admin.pipeline(transaction=True) as tx:
            if on:
                if await admin.exists(key):
                    tx.rename(key, aside)
                else:
                    tx.set(aside, "absent")  # there was nothing to set aside
                tx.set(key, "not what you expected")
            else:
                tx.delete(key)
                tx.rename(aside, key)
            await tx.execute()
        if not on and await admin.type(key) == b"string" and await admin.get(key) == b"absent":
            await admin.delete(key)

    async def flush_scripts(self) -> None:
        await self._admin().script_flush()


def fault_settings(url: str, **overrides: Any) -> Settings:
    return replace(
        # A short sweep interval: a transfer that failed is retried soon (its backoff).
        Settings(redis_url=url, token_secret=TEST_SECRET, sweep_min_age_ms=0, sweep_interval_s=0.1),
        # Unlimited gift rate: the storm, not the limiter, is under test here.
        gift_rate_per_s=1e6,
        gift_burst=1_000_000,
        **overrides,
    )


@dataclass
class Fault:
    """A fault kind: `toggle(faulty, world, on)` puts it on or takes it off."""

    name: str
    toggle: Callable[[FaultyRedis, World, bool], Awaitable[None]]
    # Cancel the sending tasks at random while their gifts are in flight.
    cancels: bool = False


@dataclass
class World:
    """What a storm runs in: senders with coins, live rooms (one of which ends midway)."""

    senders: list[str]
    rooms: list[LiveRoom]
    ending: LiveRoom
    buckets: int


async def _toggle_memory(f: FaultyRedis, w: World, on: bool) -> None:
    await f.memory_full(on)


async def _toggle_acl_credit(f: FaultyRedis, w: World, on: bool) -> None:
    await (f.acl(*DENY_CREDIT) if on else f.allow_all())


async def _toggle_acl_publish(f: FaultyRedis, w: World, on: bool) -> None:
    await (f.acl(*DENY_PUBLISH) if on else f.allow_all())


async def _toggle_wallet_type(f: FaultyRedis, w: World, on: bool) -> None:
    for room in w.rooms:
        await f.wrong_type(UserKeys.of(room.creator_id, w.buckets).wallet, on)


async def _toggle_history_type(f: FaultyRedis, w: World, on: bool) -> None:
    for room in w.rooms:
        await f.wrong_type(RoomKeys(room.room_id).events, on)


async def _toggle_scripts(f: FaultyRedis, w: World, on: bool) -> None:
    if on:
        await f.flush_scripts()


async def _no_fault(f: FaultyRedis, w: World, on: bool) -> None:
    return None


FAULTS = [
    Fault("memory limit", _toggle_memory),
    Fault("ACL denies the credit", _toggle_acl_credit),
    Fault("ACL denies the publish", _toggle_acl_publish),
    Fault("wrong type: creator's wallet", _toggle_wallet_type),
    Fault("wrong type: room's history", _toggle_history_type),
    Fault("script cache flushed", _toggle_scripts),
    Fault("task cancelled", _no_fault, cancels=True),
]


@dataclass
class Tally:
    fault: str
    gifts: int = 0
    acked: int = 0
    debited: int = 0
    lost: int = 0
    shown_twice: int = 0
    credited_twice: int = 0
    refunded: int = 0
    pending_left: int = 0
    # How often the fault bit: debits refused as unavailable (then retried by the sender),
    # and steps 2-4 that failed (then retried by the finisher or the sweeper).
    debits_refused: int = 0
    steps_failed: int = 0
    audit_ok: bool = False
    breaches: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return (
            self.audit_ok
            and not self.lost
            and not self.shown_twice
            and not self.credited_twice
            and not self.pending_left
        )


async def make_world(services: Services, *, senders: int, rooms: int, coins: int) -> World:
    users = [await new_user(services, coins) for _ in range(senders)]
    live = [await new_room(services) for _ in range(rooms)]
    return World(users, live, live[-1], services.settings.wallet_buckets)


async def _send_with_retries(
    g: Gifting, sender: str, room: LiveRoom, rng: random.Random, tally: Tally, cancels: bool
) -> None:
    """One gift as a phone sends it: retried with the same request_id while the store is
    unavailable (a retry is never charged twice)."""
    request_id = secrets.token_hex(8)
    tally.gifts += 1
    for _ in range(20):
        send = asyncio.ensure_future(g.send(sender, room, request_id=request_id, finish=False))
        if cancels and rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.003)
            send.cancel()
        try:
            await send
        except asyncio.CancelledError:
            if not send.cancelled():
                raise
            continue  # the sender gave up on this attempt (a closed socket): try again
        except Unavailable:
            tally.debits_refused += 1
            await asyncio.sleep(0.01)
            continue
        except Refusal:
            return
        tally.acked += 1
        return


async def end_room(services: Services, room: LiveRoom) -> None:
    """End `room`, trying again while a fault is on (the creator would)."""
    for _ in range(200):
        try:
            await services.rooms.end(room.room_id, user_id=room.creator_id)
            return
        except Exception:  # noqa: BLE001 - a fault of the test's own making
            await asyncio.sleep(0.02)
    raise TimeoutError("the room could not be ended")


async def storm(
    faulty: FaultyRedis,
    services: Services,
    fault: Fault,
    *,
    gifts: int,
    senders: int,
    seed: int,
    on_s: float = 0.15,
    off_s: float = 0.1,
) -> Tally:
    """`gifts` gifts from `senders` concurrent senders into three rooms (one ends midway),
    with `fault` on for `on_s` and off for `off_s` again and again meanwhile; then the fault
    is lifted, the sweeper runs until nothing is pending, and every debited gift is
    checked: shown once and credited once, or refunded, and the audit."""
    rng = random.Random(seed)
    tally = Tally(fault.name)
    failed_before = step_failures()
    world = await make_world(services, senders=senders, rooms=3, coins=10_000)
    stop = asyncio.Event()

    async def flip() -> None:
        on = False
        try:
            while not stop.is_set():
                on = not on
                await fault.toggle(faulty, world, on)
                await asyncio.sleep(on_s if on else off_s)
        finally:
            await fault.toggle(faulty, world, False)

    async with gifting(services) as g:
        flipper = asyncio.create_task(flip())
        per_sender = gifts // senders

        async def sender_loop(i: int) -> None:
            for n in range(per_sender):
                if i == 0 and n == per_sender // 2:
                    await end_room(services, world.ending)
                room = world.rooms[rng.randrange(len(world.rooms))]
                await _send_with_retries(g, world.senders[i], room, rng, tally, fault.cancels)

        await asyncio.gather(*(sender_loop(i) for i in range(senders)))
        stop.set()
        await flipper
        await g.finished()
        await sweep_until_done(g)
    await tally_gifts(services, tally)
    tally.steps_failed = step_failures() - failed_before
    return tally


def step_failures() -> int:
    """Steps 2-4 failed so far in this process (the finisher's and sweeper's counter)."""
    return int(
        sum(
            sample.value
            for family in metrics.GIFT_STEP_FAILURES.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )


async def sweep_until_done(g: Gifting, *, timeout_s: float = 30.0) -> None:
    """Sweep (backoff and all) until nothing is pending, or `timeout_s` passed."""
    survey = StoreSurvey(g.services.redis, g.services.settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await g.commands.sweeper.sweep(min_age_ms=0)
        if not await survey.pending():
            return
        await asyncio.sleep(0.05)


async def tally_gifts(services: Services, tally: Tally) -> None:
    """Fill in debited, lost, shown twice, credited twice, refunded, pending and the audit
    from what the store holds."""
    survey = StoreSurvey(services.redis, services.settings)
    sent: set[str] = set()
    received: Counter[str] = Counter()
    refunded: Counter[str] = Counter()
    async for wallet in survey.wallets():
        for entry in wallet.ledger:
            ref = entry.get("ref", "")
            if entry.get("kind") == "gift_sent":
                sent.add(ref)
            elif entry.get("kind") == "gift_received":
                received[ref] += 1
            elif entry.get("kind") == "gift_refunded":
                refunded[ref] += 1
    shown: Counter[str] = Counter()
    async for room in survey.rooms():
        shown.update(room.shown)
    tally.pending_left = len(await survey.pending())
    tally.debited = len(sent)
    for ref in sent:
        if refunded[ref] == 1 and not shown[ref] and not received[ref]:
            tally.refunded += 1
        elif not (shown[ref] == 1 and received[ref] == 1 and not refunded[ref]):
            tally.lost += 1
        tally.shown_twice += shown[ref] > 1
        tally.credited_twice += received[ref] > 1
    report = await audit(services.redis, services.settings)
    tally.audit_ok = report.ok
    tally.breaches = report.breaches


@contextlib.asynccontextmanager
async def faulty_services(folder: Path) -> AsyncIterator[tuple[FaultyRedis, Services]]:
    faulty = await FaultyRedis(folder).start()
    services = Services.build(fault_settings(faulty.url))
    try:
        yield faulty, services
    finally:
        await services.close()
        await faulty.stop()


def table(tallies: list[Tally]) -> list[str]:
    rows = [
        "| fault | gifts | acked | lost | shown twice | refunded | audit "
        "| debits refused, steps failed (retried) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for t in tallies:
        audit_cell = "holds" if t.audit_ok else f"BREACH ({len(t.breaches)})"
        # A killed server's retries happen in its processes, not counted here.
        retried = (
            "(in the servers)"
            if t.fault.startswith("kill")
            else (f"{t.debits_refused}, {t.steps_failed}")
        )
        rows.append(
            f"| {t.fault} | {t.gifts} | {t.acked} | {t.lost} | {t.shown_twice} | "
            f"{t.refunded} | {audit_cell} | {retried} |"
        )
    return rows


async def campaign(*, gifts: int, senders: int, seed: int, kills: bool) -> list[Tally]:
    tallies = []
    with tempfile.TemporaryDirectory(prefix="gs-faults-") as tmp:
        for i, fault in enumerate(FAULTS):
            async with faulty_services(Path(tmp) / f"redis-{i}") as (faulty, services):
                started = time.monotonic()
                tally = await storm(
                    faulty, services, fault, gifts=gifts, senders=senders, seed=seed + i
                )
                print(
                    f"  {fault.name}: {tally.acked} acked of {tally.gifts} in "
                    f"{time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                tallies.append(tally)
        if kills:
            from tests.kill_faults import KILL_POINTS, kill_after

            for point in KILL_POINTS:
                tallies.append(await kill_after(Path(tmp) / f"kill-{point}", point, gifts=20))
    return tallies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults",
        description="Gift storms through real Redis faults; prints what was lost (nothing, "
        "we hope). Exit 1 if any fault lost, doubled or left anything.",
    )
    parser.add_argument("--gifts", type=int, default=2000, help="gifts per fault (2000)")
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders (16)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-kills", action="store_true", help="skip the kill -9 rows")
    args = parser.parse_args(argv)
    tallies = asyncio.run(
        campaign(gifts=args.gifts, senders=args.senders, seed=args.seed, kills=not args.no_kills)
    )
    for row in table(tallies):
        print(row)
    for t in tallies:
        for breach in t.breaches[:5]:
            print(f"  {t.fault}: {breach}")
    return 0 if all(t.holds for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
