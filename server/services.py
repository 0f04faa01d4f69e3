"""The parts one server process runs with, built once in the app's lifespan."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from server.economy import Catalog, load_catalog
from server.settings import Settings
from server.store.connection import Client, Scripts, connect, load_scripts
from server.store.durability import Durability
from server.store.gifts import GiftSteps
from server.store.rooms import RoomStore
from server.store.sockets import UserSockets
from server.store.wallets import WalletStore


@dataclass(kw_only=True)
class Services:
    settings: Settings
    catalog: Catalog
    redis: Client
    scripts: Scripts
    wallets: WalletStore
    gifts: GiftSteps
    rooms: RoomStore
    sockets: UserSockets
    # When a gift may be acked: GS_ACK_DURABILITY.
    durability: Durability
    # Names this process in presence records and socket counts: unique per process, even
    # after a restart.
    process_id: str

    @classmethod
    def build(cls, settings: Settings) -> Services:
        catalog = load_catalog()
        client = connect(settings)
        scripts = load_scripts(client)
        process_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        return cls(
            settings=settings,
            catalog=catalog,
            redis=client,
            scripts=scripts,
            wallets=WalletStore(client, scripts, settings, catalog),
            gifts=GiftSteps(client, scripts, settings),
            rooms=RoomStore(client, scripts, settings),
            sockets=UserSockets(client, scripts, settings, process_id=process_id),
            durability=Durability(
                client, settings.ack_durability, timeout_ms=settings.ack_durability_timeout_ms
            ),
            process_id=process_id,
        )

    async def close(self) -> None:
        await self.redis.aclose()
