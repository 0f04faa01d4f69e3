"""A crowd of bot viewers: rooms found or opened, viewers signed up and funded, all of
them connected for `duration_s`, then drained, closed and summed up.

Everything is bounded: sign-ups and connections run a limited number at a time, the
acting phase lasts `duration_s`, the drain `drain_s`, and the whole run is under a hard
deadline, so the crowd stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from client_sim.feed import LiveFeed
from client_sim.gifts import GiftPicker
from client_sim.stats import SimStats, Summary
from client_sim.viewer import Viewer, ViewerPlan
from giftstream_client.errors import ApiError, GiftstreamError, ServerUnreachable
from giftstream_client.models import Account
from giftstream_client.rest import GiftstreamClient, ws_base

BOT_NAMES = (
    "Mia",
    "Leo",
    "Ava",
    "Kai",
    "Zoe",
    "Max",
    "Ivy",
    "Sam",
    "Noa",
    "Eli",
    "Uma",
    "Ray",
    "Lia",
    "Ben",
    "Ada",
    "Jon",
    "Pia",
    "Tom",
    "Eva",
    "Rio",
)


@dataclass(frozen=True, slots=True)
class CrowdRoom:
    room_id: str
    title: str


@dataclass(frozen=True, kw_only=True)
class CrowdConfig:
    url: str
    viewers: int
    room_id: str | None = None
    rooms: int = 1
    duration_s: float = 30.0
    anonymous_share: float = 0.0
    plan: ViewerPlan = field(default_factory=ViewerPlan)
    feed: bool = True
    status_every_s: float = 2.0
    setup_concurrency: int = 16
    connects_per_s: float = 200.0
    setup_timeout_s: float = 120.0
    end_rooms: bool = True
    seed: int | None = None

    @property
    def ws_base(self) -> str:
        try:
            return ws_base(self.url)
        except ValueError:
            raise ValueError(f"--url must start with http:// or https://: {self.url!r}") from None


class SetupError(Exception):
    """The crowd could not start: the server is unreachable or refused the setup. Its
    message is one line that says which and what to do."""


def setup_error(url: str, exc: BaseException) -> SetupError:
    if isinstance(exc, ServerUnreachable):
        return SetupError(f"{exc}")
    if isinstance(exc, ApiError):
        hint = ""
        if exc.status == 503:
            hint = " (its Redis is unreachable?)"
        return SetupError(f"the server at {url} refused the setup: {exc}{hint}")
    if isinstance(exc, TimeoutError):
        return SetupError(f"setting up at {url} timed out")
    return SetupError(f"setting up at {url} failed: {exc}")


async def run_crowd(config: CrowdConfig, out: TextIO) -> Summary:
    """Run the crowd; the summary of what it measured. Raises `SetupError` when the
    rooms or the catalog cannot be had. SIGINT/SIGTERM end the acting phase early."""
    rng = random.Random(config.seed)
    stats = SimStats(viewers_planned=config.viewers)
    leave = asyncio.Event()
    async with GiftstreamClient(
        config.url, timeout_s=15.0, max_connections=config.setup_concurrency
    ) as api:
        try:
            async with asyncio.timeout(config.setup_timeout_s):
                picker = GiftPicker.from_gifts(await api.gifts())
                packages = [p.id for p in await api.coin_packages()]
                if config.plan.package_id not in packages:
                    raise SetupError(
                        f"no coin package {config.plan.package_id!r} (there are "
                        f"{', '.join(packages)})"
                    )
                rooms, creators = await _rooms(api, config)
                crowd = await _sign_up(api, config, rooms, stats, rng)
        except (GiftstreamError, TimeoutError) as exc:
            raise setup_error(config.url, exc) from exc
        feed = LiveFeed(
            out,
            rooms={r.room_id: f"{i + 1}:{r.title[:20]}" for i, r in enumerate(rooms)},
            gift_names=picker.names,
            enabled=config.feed,
        )
        viewers = [
            Viewer(
                name=account.name if account else f"anon-{i}",
                ws_base=config.ws_base,
                room_id=room.room_id,
                account=account,
                coins=coins,
                plan=config.plan,
                picker=picker,
                api=api,
                stats=stats,
                feed=feed,
                rng=random.Random(rng.random()),
            )
            for i, (room, account, coins) in enumerate(crowd)
        ]
        started = time.monotonic()
        acted = 0.0
        with _signals_set(leave):
            # The hard bound on closing: drains, closes and connects in progress all have
            # their own timeouts; this one only makes sure nothing hangs past them.
            try:
                async with asyncio.timeout(None) as closing:
                    async with asyncio.TaskGroup() as tasks:
                        for i, viewer in enumerate(viewers):
                            # Hundreds of handshakes at once are a thundering herd, not a crowd.
                            tasks.create_task(viewer.run(start_after_s=i / config.connects_per_s))
                        ticker = tasks.create_task(
                            _tick(feed, stats, viewers, config.status_every_s)
                        )
                        lag_watch = tasks.create_task(_watch_loop_lag(stats))
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(config.duration_s):
                                await leave.wait()
                        acted = time.monotonic() - started
                        for viewer in viewers:
                            viewer.leave()
                        ticker.cancel()
                        lag_watch.cancel()
                        loop = asyncio.get_running_loop()
                        closing.reschedule(loop.time() + config.plan.drain_s + 15.0)
            except TimeoutError:
                # Some viewer did not finish closing in time: it was cancelled.
                stats.closes["cancelled at stop"] += 1
        if config.end_rooms:
            for room, creator in creators:
                with contextlib.suppress(GiftstreamError):
                    await api.end_room(creator, room.room_id)
    feed.status()
    return Summary(duration_s=acted, rooms=[r.room_id for r in rooms], stats=stats)


async def _tick(feed: LiveFeed, stats: SimStats, viewers: list[Viewer], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        stats.now_connected(sum(1 for v in viewers if v.connected))
        feed.status(
            f"{stats.connected_now} connected, {stats.gifts_acked} gifts acked, "
            f"{sum(stats.events_received.values())} events received"
        )


async def _watch_loop_lag(stats: SimStats, *, every_s: float = 0.1) -> None:
    """How late the bot's own event loop runs: when it is busy, every latency it measures
    includes its own delay, and the summary says so."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + every_s
        await asyncio.sleep(every_s)
        stats.loop_lag.record(max(0.0, loop.time() - expected))


async def _rooms(
    api: GiftstreamClient, config: CrowdConfig
) -> tuple[list[CrowdRoom], list[tuple[CrowdRoom, Account]]]:
    """The rooms to fill, and the ones opened here with their creators (to end them)."""
    if config.room_id is not None:
        detail = await api.room(config.room_id)
        if detail.status != "live":
            raise SetupError(f"room {config.room_id} is {detail.status}, not live")
        return [CrowdRoom(detail.room_id, detail.room.title)], []
    created: list[tuple[CrowdRoom, Account]] = []
    for i in range(config.rooms):
        creator = await api.sign_up(f"Creator {i + 1}")
        title = f"Bot live {i + 1}"
        room_id = await api.create_room(creator, title)
        created.append((CrowdRoom(room_id, title), creator))
    return [room for room, _ in created], created


async def _sign_up(
    api: GiftstreamClient,
    config: CrowdConfig,
    rooms: list[CrowdRoom],
    stats: SimStats,
    rng: random.Random,
) -> list[tuple[CrowdRoom, Account | None, int]]:
    """Every viewer's room, account (None: watches anonymously) and coins. Viewers whose
    sign-up fails are left out and counted; when every one fails, the setup did."""
    anonymous = round(config.viewers * config.anonymous_share)
    stats.anonymous_planned = anonymous
    gate = asyncio.Semaphore(config.setup_concurrency)
    first_failure: list[GiftstreamError] = []

    async def one(i: int) -> tuple[CrowdRoom, Account | None, int] | None:
        room = rooms[i % len(rooms)]
        if i < anonymous:
            return room, None, 0
        name = f"{BOT_NAMES[i % len(BOT_NAMES)]}_{i:03d}"
        async with gate:
            try:
                account = await api.sign_up(name)
            except GiftstreamError as exc:
                stats.signup_failures[getattr(exc, "code", type(exc).__name__)] += 1
                first_failure.append(exc)
                return None
            coins = 0
            if config.plan.gift_rate > 0:
                try:
                    coins = (await api.recharge(account, config.plan.package_id)).coins
                    stats.recharges += 1
                except GiftstreamError as exc:
                    stats.recharge_failures[getattr(exc, "code", type(exc).__name__)] += 1
        return room, account, coins

    async with asyncio.TaskGroup() as tasks:
        jobs = [tasks.create_task(one(i)) for i in range(config.viewers)]
    result = [c for c in (job.result() for job in jobs) if c is not None]
    if not result and first_failure:
        raise first_failure[0]
    rng.shuffle(result)
    return result


@contextlib.contextmanager
def _signals_set(event: asyncio.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set `event` (a graceful stop) instead of killing."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, event.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
