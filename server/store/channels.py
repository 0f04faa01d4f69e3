"""Room channels: the one Redis connection in subscribe mode that a process holds.

`RoomChannels.run()` keeps that connection up: it connects, subscribes to every wanted
channel, reads messages, and on any loss (Redis restarted, network gone, no answer to
its pings) reconnects with a backoff and subscribes to every wanted channel again.
`subscribe` and `unsubscribe` are synchronous: they change the wanted set and queue the
command, in order, on the current connection.

What the owner is told, through callbacks run in the reader task (they must not block):
- `on_message(channel, data)` for each published message, in publish order;
- `on_subscribed(channel)` once the latest SUBSCRIBE sent for that channel on the current
  connection is in effect (from then on every message published there arrives);
- `on_lost()` when the connection is lost: messages may have been missed until the next
  `on_subscribed` of each channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError, ResponseError

from server.store.cancellation import reraise_lost_cancellation
from server.store.connection import Client

log = logging.getLogger(__name__)


class _Stale(Exception):
    """The connection answered nothing for too long."""


class _Link:
    """One connection's state: commands to send, in order, and SUBSCRIBE counts."""

    def __init__(self, conn: Any, *, max_commands: int) -> None:
        self.conn = conn
        self.commands: asyncio.Queue[tuple[bytes, ...]] = asyncio.Queue(maxsize=max_commands)
        self.overflowed = asyncio.Event()
        self.sent: dict[bytes, int] = {}
        self.confirmed: dict[bytes, int] = {}
        self.last_read = asyncio.get_running_loop().time()

    def send(self, *command: bytes) -> None:
        try:
            self.commands.put_nowait(command)
        except asyncio.QueueFull:
            # Far more commands than rooms come and go: start over on a new connection,
            # which subscribes to the wanted set in one command.
            self.overflowed.set()


class RoomChannels:
    def __init__(
        self,
        client: Client,
        *,
        on_message: Callable[[bytes, bytes], None],
        on_subscribed: Callable[[bytes], None],
        on_lost: Callable[[], None],
        client_name: str | None = None,
        ping_interval_s: float = 5.0,
        min_backoff_s: float = 0.05,
        max_commands: int = 10_000,
    ) -> None:
        self._client = client
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._client_name = client_name
        self._ping_interval_s = ping_interval_s
        self._min_backoff_s = min_backoff_s
        self._max_commands = max_commands
        self._wanted: set[bytes] = set()
        self._link: _Link | None = None
        self.connected = asyncio.Event()

    # --- what the owner calls ------------------------------------------------------

    def subscribe(self, channel: bytes) -> None:
        """Want `channel`; `on_subscribed(channel)` follows once it is in effect."""
        self._wanted.add(channel)
        link = self._link
        if link is not None:
            link.sent[channel] = link.sent.get(channel, 0) + 1
            link.send(b"SUBSCRIBE", channel)

    def unsubscribe(self, channel: bytes) -> None:
        """No longer want `channel` (messages already on their way may still arrive)."""
        self._wanted.discard(channel)
        link = self._link
        if link is not None:
            link.send(b"UNSUBSCRIBE", channel)

    def is_subscribed(self, channel: bytes) -> bool:
        """Whether `channel` is wanted and its latest SUBSCRIBE is in effect."""
        link = self._link
        if link is None or channel not in self._wanted:
            return False
        sent = link.sent.get(channel, 0)
        return sent > 0 and link.confirmed.get(channel, 0) >= sent

    @property
    def wanted(self) -> frozenset[bytes]:
        return frozenset(self._wanted)

    # --- the connection ---------------------------------------------------------------

    async def _new_connection(self) -> Any:
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            factory, options = pool.connection_class, pool.connection_kwargs
        else:
            # A Redis Cluster forwards PUBLISH to every node: any node will do. The client
            # learns its nodes on its first command, or here.
            if self._client.get_default_node() is None:
                await self._client.initialize()
            node = self._client.get_default_node()
            factory, options = node.connection_class, node.connection_kwargs
        # RESP2: messages come back as plain replies to this connection's reads (RESP3
        # would hand them to a push handler instead).
        overrides: dict[str, Any] = {"protocol": 2}
        if self._client_name:
            overrides["client_name"] = self._client_name
        return factory(**{**options, **overrides})

    async def run(self) -> None:
        """Keep the subscribe connection up until cancelled. Never raises otherwise."""
        backoff = self._min_backoff_s
        while True:
            conn: Any = None
            try:
                conn = await self._new_connection()
                await conn.connect()
                reraise_lost_cancellation()
                backoff = self._min_backoff_s
                await self._serve(conn)
            except (RedisError, OSError, EOFError, _Stale) as exc:
                log.warning("room channels: connection lost (%s); reconnecting", exc)
            except Exception:
                # A bug must not end the fan-out of the whole process: log it, start over.
                log.exception("room channels: unexpected error; reconnecting")
            finally:
                self._link = None
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
            self._on_lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max(2.0, self._min_backoff_s))

    async def _serve(self, conn: Any) -> None:
        link = _Link(conn, max_commands=self._max_commands)
        if self._wanted:
            channels = sorted(self._wanted)
            for channel in channels:
                link.sent[channel] = 1
            link.send(b"SUBSCRIBE", *channels)
        self._link = link
        self.connected.set()
        # Not a TaskGroup: on Python 3.11 one whose child fails leaves this task marked
        # as cancelling, which `reraise_lost_cancellation` would then take at its word.
        tasks = {
            asyncio.create_task(self._write(link), name="channels-write"),
            asyncio.create_task(self._read(link), name="channels-read"),
            asyncio.create_task(self._watch(link), name="channels-watch"),
        }
        for task in tasks:
            # Read at once: a task that fails while this one is cancelled at shutdown (its
            # connection closed under it) must not be reported as never retrieved.
            task.add_done_callback(_retrieve)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
        raise _Stale("the connection's tasks ended")

    async def _write(self, link: _Link) -> None:
        while True:
            command = await link.commands.get()
            # check_health=False: a health check would read a reply in this task while the
            # reader task owns every read.
            await link.conn.send_command(*command, check_health=False)
            reraise_lost_cancellation()

    async def _watch(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(link.overflowed.wait(), self._ping_interval_s)
            except TimeoutError:
                pass
            else:
                raise _Stale("too many commands queued")
            if loop.time() - link.last_read > 3 * self._ping_interval_s:
                raise _Stale(f"no answer for {3 * self._ping_interval_s:.0f}s")
            link.send(b"PING")

    async def _read(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                reply = await link.conn.read_response(timeout=math.inf)
            except ResponseError as exc:
                log.warning("room channels: redis refused a command: %s", exc)
                continue
            reraise_lost_cancellation()
            link.last_read = loop.time()
            if not isinstance(reply, list) or len(reply) < 2:
                continue  # PONG outside subscribe mode
            kind = reply[0]
            if kind == b"message":
                self._on_message(reply[1], reply[2])
            elif kind == b"subscribe":
                channel = reply[1]
                link.confirmed[channel] = link.confirmed.get(channel, 0) + 1
                if self.is_subscribed(channel):
                    self._on_subscribed(channel)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
