"""Room channels: the Redis connections in subscribe mode that a process holds.

On one Redis, classic pub/sub: one connection, SUBSCRIBE, and the scripts PUBLISH. On a
Redis Cluster, sharded pub/sub: a room's channel `gs:{r<id>}:ch` hashes to the slot of
the room's keys, so it lives on the room's shard; the scripts SPUBLISH there and the
event travels only to that shard's subscribers (a classic PUBLISH goes to every node of
the cluster over its bus). A process holds one SSUBSCRIBE connection per shard serving
at least one channel it wants, and follows the slots: a channel whose slot moved (a
MOVED answer to its SSUBSCRIBE; the `sunsubscribe` a node pushes when it stops serving a
slot, on resharding or failover) or whose shard's connection was lost is subscribed again
where the refreshed cluster map says it lives now.

`RoomChannels.run()` keeps every connection up: it connects, subscribes to the channels
it holds, reads messages, and on any loss (Redis restarted, network gone, no answer to
its pings) reconnects with a backoff and subscribes again. `subscribe` and `unsubscribe`
are synchronous: they change the wanted set and queue the command, in order, on the
channel's connection.

What the owner is told, through callbacks run in the reader tasks (they must not block):
- `on_message(channel, data)` for each published message, in publish order;
- `on_subscribed(channel)` once the latest subscription of that channel is in effect (from
  then on every message published there arrives);
- `on_lost()` when messages may have been missed, until the next `on_subscribed` of each
  channel. On a cluster only some channels may be affected (one shard's connection, one
  moved slot): `on_lost()` is then followed at once by `on_subscribed` for every channel
  whose subscription held, so those rooms only read their history once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import MovedError, RedisError, ResponseError

from server.store.cancellation import reraise_lost_cancellation
from server.store.connection import Client

log = logging.getLogger(__name__)


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


@dataclass(frozen=True, slots=True)
class _Dialect:
    subscribe: bytes
    unsubscribe: bytes
    message: bytes
    subscribed: bytes
    unsubscribed: bytes


_CLASSIC = _Dialect(b"SUBSCRIBE", b"UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
_SHARDED = _Dialect(b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")

_SUB, _UNSUB, _PING = 0, 1, 2


class _Stale(Exception):
    """The connection answered nothing for too long, or must start over."""


class _Link:
    """One connection's state. Every command names one channel (a sharded SSUBSCRIBE of
    several must keep to one slot) and gets one reply, in order: `awaiting` pairs each
    reply with its command, which tells our own unsubscribe confirmations from the ones a
    node pushes when it stops serving a slot."""

    def __init__(self, conn: Any, *, max_commands: int) -> None:
        self.conn = conn
        self.commands: asyncio.Queue[tuple[bytes, ...]] = asyncio.Queue(maxsize=max_commands)
        self.overflowed = asyncio.Event()
        self.awaiting: deque[tuple[int, bytes | None]] = deque()
        self.pending: dict[bytes, int] = {}  # SUBSCRIBEs sent, not answered yet
        self.active: set[bytes] = set()  # in effect: the last SUBSCRIBE was confirmed
        self.last_read = asyncio.get_running_loop().time()

    def send(self, kind: int, *command: bytes) -> None:
        try:
            self.commands.put_nowait(command)
        except asyncio.QueueFull:
            # Far more commands than rooms come and go: start over on a new connection.
            self.overflowed.set()
            return
        channel = command[1] if len(command) > 1 else None
        self.awaiting.append((kind, channel))
        if kind == _SUB and channel is not None:
            self.pending[channel] = self.pending.get(channel, 0) + 1
        elif kind == _UNSUB and channel is not None:
            self.active.discard(channel)


class _Subscriber:
    """One subscribe connection (to the one Redis, or to one shard's primary) and the
    channels it holds."""

    def __init__(self, owner: RoomChannels, name: str, options: dict[str, Any]) -> None:
        self.owner = owner
        self.name = name
        self.options = options
        self.channels: set[bytes] = set()
        self.link: _Link | None = None
        self.task: asyncio.Task[None] | None = None

    def add(self, channel: bytes) -> None:
        self.channels.add(channel)
        if self.link is not None:
            self.link.send(_SUB, self.owner.dialect.subscribe, channel)

    def remove(self, channel: bytes) -> None:
        self.channels.discard(channel)
        if self.link is not None:
            self.link.send(_UNSUB, self.owner.dialect.unsubscribe, channel)

    def in_effect(self, channel: bytes) -> bool:
        link = self.link
        return (
            link is not None
            and channel in self.channels
            and channel in link.active
            and not link.pending.get(channel)
        )

    async def run(self) -> None:
        """Keep this connection up until cancelled. Never raises otherwise."""
        owner = self.owner
        backoff = owner.min_backoff_s
        while True:
            conn: Any = None
            try:
                factory = self.options["connection_class"]
                kwargs = {k: v for k, v in self.options.items() if k != "connection_class"}
                conn = factory(**kwargs)
                await conn.connect()
                reraise_lost_cancellation()
                backoff = owner.min_backoff_s
                await self._serve(conn)
            except (RedisError, OSError, EOFError, _Stale) as exc:
                log.warning(
                    "room channels (%s): connection lost (%s); reconnecting", self.name, exc
                )
            except Exception:
                # A bug must not end the fan-out of the whole process: log it, start over.
                log.exception("room channels (%s): unexpected error; reconnecting", self.name)
            finally:
                had = self.link is not None
                self.link = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
            owner.link_lost(self, had_link=had)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max(2.0, owner.min_backoff_s))

    async def _serve(self, conn: Any) -> None:
        link = _Link(conn, max_commands=self.owner.max_commands)
        dialect = self.owner.dialect
        for channel in sorted(self.channels):
            link.send(_SUB, dialect.subscribe, channel)
        self.link = link
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
        interval = self.owner.ping_interval_s
        while True:
            try:
                await asyncio.wait_for(link.overflowed.wait(), interval)
            except TimeoutError:
                pass
            else:
                raise _Stale("too many commands queued")
            silent = loop.time() - link.last_read
            if silent > self.owner.stale_after_s:
                raise _Stale(f"no answer for {silent:.1f}s")
            link.send(_PING, b"PING")

    async def _read(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        dialect = self.owner.dialect
        while True:
            try:
                reply = await link.conn.read_response(timeout=math.inf)
            except ResponseError as exc:
                link.last_read = loop.time()
                self._refused(link, exc)
                continue
            reraise_lost_cancellation()
            link.last_read = loop.time()
            if not isinstance(reply, list) or len(reply) < 2:
                self._answered(link, _PING)  # PONG outside subscribe mode
                continue
            kind, channel = reply[0], reply[1]
            if kind == dialect.message:
                self.owner.on_message(channel, reply[2])
            elif kind == dialect.subscribed:
                self._answered(link, _SUB, channel)
                left = link.pending.get(channel, 0) - 1
                if left > 0:
                    link.pending[channel] = left
                    continue
                link.pending.pop(channel, None)
                if channel in self.channels:
                    link.active.add(channel)
                    self.owner.on_subscribed(channel)
                elif (_UNSUB, channel) not in link.awaiting:
                    # Answered after it was moved off this connection: do not keep it.
                    link.send(_UNSUB, dialect.unsubscribe, channel)
            elif kind == dialect.unsubscribed:
                if link.awaiting and link.awaiting[0] == (_UNSUB, channel):
                    link.awaiting.popleft()
                else:
                    # Pushed by the node: it no longer serves this channel's slot.
                    link.active.discard(channel)
                    if channel in self.channels:
                        self.owner.dropped(self, channel, "its slot moved")
            elif kind == b"pong":
                self._answered(link, _PING)

    def _answered(self, link: _Link, kind: int, channel: bytes | None = None) -> None:
        if link.awaiting and link.awaiting[0][0] == kind:
            link.awaiting.popleft()

    def _refused(self, link: _Link, exc: ResponseError) -> None:
        if not link.awaiting:
            log.warning("room channels (%s): redis said: %s", self.name, exc)
            return
        kind, channel = link.awaiting.popleft()
        if kind != _SUB or channel is None:
            log.warning("room channels (%s): redis refused a command: %s", self.name, exc)
            return
        left = link.pending.get(channel, 0) - 1
        if left > 0:
            link.pending[channel] = left
        else:
            link.pending.pop(channel, None)
        if channel not in self.channels:
            return
        if isinstance(exc, MovedError):
            self.owner.dropped(self, channel, f"moved to {exc.host}:{exc.port}")
        else:
            log.warning("room channels (%s): subscribe refused: %s", self.name, exc)
            self.owner.dropped(self, channel, str(exc), retry_after_s=0.5)


class RoomChannels:
    def __init__(
        self,
        client: Client,
        *,
        on_message: Callable[[bytes, bytes], None],
        on_subscribed: Callable[[bytes], None],
        on_lost: Callable[[], None],
        client_name: str | None = None,
        ping_interval_s: float = 1.0,
        stale_after_s: float = 5.0,
        min_backoff_s: float = 0.05,
        max_commands: int = 10_000,
        reroute_interval_s: float = 0.5,
    ) -> None:
        self._client = client
        self.on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._client_name = client_name
        # A connection that answers no PING for `stale_after_s` is given up and made
        # anew: a host cut off from Redis (no reset, nothing read) finds out that soon,
        # and its rooms count as lost (the hub closes their viewers after a while, so they
        # reconnect elsewhere).
        self.ping_interval_s = ping_interval_s
        self.stale_after_s = stale_after_s
        self.min_backoff_s = min_backoff_s
        self.max_commands = max_commands
        self._reroute_interval_s = reroute_interval_s
        self.sharded = is_cluster(client)
        self.dialect = _SHARDED if self.sharded else _CLASSIC
        self._wanted: set[bytes] = set()
        # Which subscriber holds each wanted channel (on a cluster: its shard's); a wanted
        # channel missing here waits for the cluster map to say where it lives.
        self._holder: dict[bytes, _Subscriber] = {}
        self._subscribers: dict[str, _Subscriber] = {}
        self._reroute = asyncio.Event()
        self._stale_map = True
        self._lost_pending: set[bytes] = set()
        self._running = False

    # --- what the owner calls ------------------------------------------------------

    def subscribe(self, channel: bytes) -> None:
        """Want `channel`; `on_subscribed(channel)` follows once it is in effect."""
        self._wanted.add(channel)
        holder = self._holder.get(channel)
        if holder is not None:
            # Subscribe again on its connection: its latest SUBSCRIBE decides.
            holder.add(channel)
            return
        self._place(channel)

    def unsubscribe(self, channel: bytes) -> None:
        """No longer want `channel` (messages already on their way may still arrive)."""
        self._wanted.discard(channel)
        holder = self._holder.pop(channel, None)
        if holder is not None:
            holder.remove(channel)
            if self.sharded and not holder.channels:
                self._reroute.set()  # closes the now idle shard connection

    def is_subscribed(self, channel: bytes) -> bool:
        """Whether `channel` is wanted and its latest subscription is in effect."""
        holder = self._holder.get(channel)
        return channel in self._wanted and holder is not None and holder.in_effect(channel)

    @property
    def wanted(self) -> frozenset[bytes]:
        return frozenset(self._wanted)

    def shards(self) -> dict[str, frozenset[bytes]]:
        """Each subscribe connection (the Redis or shard primary it goes to, host:port) and
        the channels it holds."""
        return {name: frozenset(sub.channels) for name, sub in self._subscribers.items()}

    # --- lifetime -------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the subscribe connections up until cancelled. Never raises otherwise."""
        self._running = True
        try:
            if not self.sharded:
                sub = self._subscriber_for("redis", self._classic_options())
                for channel in self._wanted:
                    self._holder[channel] = sub
                    sub.channels.add(channel)
                await sub.run()
            else:
                await self._route()
        finally:
            self._running = False
            tasks = [sub.task for sub in self._subscribers.values() if sub.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)

    # --- what the subscribers report ------------------------------------------------------

    def on_subscribed(self, channel: bytes) -> None:
        if channel in self._wanted:
            self._on_subscribed(channel)

    def link_lost(self, sub: _Subscriber, *, had_link: bool) -> None:
        if had_link and sub.channels:
            self._report_lost(sub.channels)
        if self.sharded:
            self._refresh()

    def dropped(
        self, sub: _Subscriber, channel: bytes, why: str, *, retry_after_s: float = 0.0
    ) -> None:
        """`sub` no longer holds `channel` (its node does not serve it now): report it
        lost and place it again from a refreshed cluster map."""
        log.info("room channels (%s): %r dropped (%s)", sub.name, channel, why)
        sub.channels.discard(channel)
        if self._holder.get(channel) is sub:
            del self._holder[channel]
        self._report_lost([channel])
        if retry_after_s:
            asyncio.get_running_loop().call_later(retry_after_s, self._refresh)
        else:
            self._refresh()

    # --- how ------------------------------------------------------------------------------

    def _report_lost(self, channels: Iterable[bytes]) -> None:
        # Several losses in one turn of the loop (a slot with many rooms moved) are told
        # once, on the next turn.
        if not self._lost_pending:
            asyncio.get_running_loop().call_soon(self._tell_lost)
        self._lost_pending.update(channels)

    def _tell_lost(self) -> None:
        lost, self._lost_pending = self._lost_pending, set()
        self._on_lost()
        # The hub's `on_lost` covers every channel: the ones whose subscription held are
        # in effect still, and say so at once.
        for channel in list(self._wanted):
            if channel not in lost and self.is_subscribed(channel):
                self._on_subscribed(channel)

    def _classic_options(self) -> dict[str, Any]:
        pool = self._client.connection_pool
        return self._options(pool.connection_class, pool.connection_kwargs)

    def _options(self, connection_class: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        # RESP2: messages come back as plain replies to this connection's reads (RESP3
        # would hand them to a push handler instead).
        options: dict[str, Any] = {**kwargs, "protocol": 2, "connection_class": connection_class}
        if self._client_name:
            options["client_name"] = self._client_name
        return options

    def _subscriber_for(self, name: str, options: dict[str, Any]) -> _Subscriber:
        sub = self._subscribers.get(name)
        if sub is None:
            sub = _Subscriber(self, name, options)
            self._subscribers[name] = sub
            if self.sharded and self._running:
                sub.task = asyncio.get_running_loop().create_task(
                    sub.run(), name=f"channels-{name}"
                )
        return sub

    def _place(self, channel: bytes) -> None:
        """Hand `channel` to the subscriber of where it lives (the one Redis, or its
        slot's primary as the client's cluster map says)."""
        if not self.sharded:
            if self._running:
                sub = self._subscribers["redis"]
                self._holder[channel] = sub
                sub.add(channel)
            return
        node = self._node_of(channel)
        if node is None or not self._running:
            self._refresh()
            return
        current = self._holder.get(channel)
        if current is not None and current.name == node.name:
            return
        if current is not None:
            current.remove(channel)
        sub = self._subscriber_for(
            node.name, self._options(node.connection_class, node.connection_kwargs)
        )
        self._holder[channel] = sub
        sub.add(channel)

    def _node_of(self, channel: bytes) -> Any:
        manager = self._client.nodes_manager
        if not manager.slots_cache:
            return None
        try:
            return manager.get_node_from_slot(self._client.keyslot(channel))
        except RedisError:
            return None

    def _refresh(self) -> None:
        """The cluster map may have changed: ask the nodes again, then place anew."""
        self._stale_map = True
        self._reroute.set()

    async def _route(self) -> None:
        """On a cluster: place every wanted channel on its slot's primary, again whenever
        the map may have changed (a lost connection, a moved slot); close the shard
        connections that hold nothing."""
        backoff = self.min_backoff_s
        self._refresh()
        while True:
            await self._reroute.wait()
            self._reroute.clear()
            if self._stale_map:
                self._stale_map = False
                try:
                    # Asks the nodes who serves which slot: the client's own cluster map,
                    # which it also refreshes itself on a MOVED answer to a command.
                    await self._client.nodes_manager.initialize()
                except Exception as exc:  # noqa: BLE001 - the cluster may be failing over
                    log.warning("room channels: cluster map not refreshed (%s); retrying", exc)
                    reraise_lost_cancellation()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    self._refresh()
                    continue
                reraise_lost_cancellation()
                backoff = self.min_backoff_s
            for channel in sorted(self._wanted):
                self._place(channel)
            for name, sub in list(self._subscribers.items()):
                if not sub.channels:
                    del self._subscribers[name]
                    if sub.task is not None:
                        sub.task.cancel()
            waiting = any(
                channel not in self._holder or self._holder[channel].link is None
                for channel in self._wanted
            )
            if waiting:
                # A shard is away (failing over, unreachable): ask again shortly, until
                # its channels have a connection again.
                await asyncio.sleep(self._reroute_interval_s)
                self._refresh()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
