"""The open room sockets of each signed-in user, counted over every process, so that one
account cannot open more than `max_sockets_per_user` (DESIGN section 4).

Each socket is a member of its user's sorted set (in the user's bucket), scored by when
it expires. This process renews the members of its open sockets every third of their
lifetime and removes each on close; a process that dies leaves members that expire.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from server.settings import Settings
from server.store.answers import answer
from server.store.cancellation import reraise_lost_cancellation
from server.store.connection import Client, Scripts
from server.store.keys import UserKeys
from server.store.wallets import now_ms

log = logging.getLogger(__name__)

SOCKET_TTL_MS = 30_000


class UserSockets:
    def __init__(self, client: Client, scripts: Scripts, settings: Settings, *, process_id: str):
        self._r = client
        self._scripts = scripts
        self._settings = settings
        self._process_id = process_id
        self._numbers = itertools.count(1)
        # member -> its user's socket set key, for every socket open in this process
        self._open: dict[str, str] = {}

    async def open(self, user_id: str) -> str:
        """Count a new socket of `user_id`; returns its member name (for `close`). Atomic:
        `RateLimited` when the user already has `max_sockets_per_user` open over every
        process, `Suspended`/`Unauthorized` for an account not in good standing."""
        k = UserKeys.of(user_id, self._settings.wallet_buckets)
        member = f"{self._process_id}:{next(self._numbers)}"
        answer(
            await self._scripts.open_socket(
                keys=[k.profile, k.sockets],
                args=[f"{member}|{self._settings.max_sockets_per_user}|{SOCKET_TTL_MS}"],
            )
        )
        self._open[member] = k.sockets
        return member

    async def close(self, member: str) -> None:
        """The socket is closed (idempotent; if Redis is away, the member expires)."""
        key = self._open.pop(member, None)
        if key is not None:
            await self._r.zrem(key, member)

    async def renew(self) -> None:
        """Push back the expiry of every socket open in this process."""
        if not self._open:
            return
        expires = now_ms() + SOCKET_TTL_MS
        by_key: dict[str, dict[str, int]] = {}
        for member, key in self._open.items():
            by_key.setdefault(key, {})[member] = expires
        async with self._r.pipeline(transaction=False) as pipe:
            for key, members in by_key.items():
                pipe.zadd(key, members)
                pipe.pexpire(key, SOCKET_TTL_MS)
            await pipe.execute(raise_on_error=False)

    async def run(self) -> None:
        """Renew every third of the sockets' lifetime until cancelled."""
        while True:
            await asyncio.sleep(SOCKET_TTL_MS / 3000)
            try:
                await self.renew()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("open sockets not renewed (%s)", exc)
            reraise_lost_cancellation()
