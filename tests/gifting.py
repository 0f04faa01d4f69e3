"""The gift path as the server runs it (`server.room_commands`), in the test's own process,
on a real Redis: users, rooms and gifts for tests of the saga and its faults."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.economy import PaymentOutcome
from server.protocol import GiftFrame
from server.room_commands import LiveRoom, RoomCommands, run_gift_steps
from server.services import Services

BORN = dt.date(1990, 1, 1)


async def new_user(services: Services, coins: int = 0, *, name: str = "U") -> str:
    """A user with `coins` bought in one package of that size (0: none)."""
    user_id = await services.wallets.create_user(name=name, born=BORN, region="US")
    if coins:
        package = next(p for p in services.catalog.packages.values() if p.coins == coins)
        await services.wallets.recharge(
            user_id,
            package=package,
            card_number="4242424242424242",
            outcome=PaymentOutcome.APPROVED,
            idempotency_key=uuid.uuid4().hex,
        )
    return user_id


async def new_room(services: Services) -> LiveRoom:
    creator = await new_user(services, name="C")
    room_id = await services.rooms.create(creator_id=creator, creator_name="C", title="t")
    return LiveRoom(room_id, creator)


@dataclass
class Gifting:
    """`RoomCommands` with its finisher (and maybe its sweeper) running, as in the server."""

    services: Services
    commands: RoomCommands
    sweep: bool = False
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the finisher (and the sweeper): until then, transfers handed over wait."""
        if self.task is None:
            c = self.commands
            self.task = asyncio.create_task(run_gift_steps(c) if self.sweep else c.finisher.run())

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def frame(
        self, gift_id: str = "rose", count: int = 1, request_id: str | None = None
    ) -> GiftFrame:
        return GiftFrame(request_id or uuid.uuid4().hex, self.services.catalog.gift(gift_id), count)

    async def send(
        self,
        sender_id: str,
        room: LiveRoom,
        gift_id: str = "rose",
        count: int = 1,
        *,
        request_id: str | None = None,
        finish: bool = True,
    ) -> int:
        """Send a gift the way a socket does; returns the ack's coins. With `finish`,
        waits for its steps 2-4 too (as far as they go)."""
        sender = await self.services.wallets.profile(sender_id)
        coins = await self.commands.gift(sender, room, self.frame(gift_id, count, request_id))
        if finish:
            await self.finished()
        return coins

    async def finished(self) -> None:
        assert await self.commands.finisher.drain(timeout_s=10)


@contextlib.asynccontextmanager
async def gifting(
    services: Services, *, sweep: bool = False, start: bool = True
) -> AsyncIterator[Gifting]:
    """The gift path on `services`; with `sweep`, its sweeper runs too (else a test calls
    `commands.sweeper.sweep` when it wants one); without `start`, nothing runs steps 2-4
    until the test calls `start()`."""
    commands = RoomCommands(steps=services.gifts, rooms=services.rooms, settings=services.settings)
    running = Gifting(services, commands, sweep)
    if start:
        running.start()
    try:
        yield running
    finally:
        await running.stop()
