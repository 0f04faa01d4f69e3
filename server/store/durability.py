"""When a gift is acked: the ack-durability setting (`GS_ACK_DURABILITY`).

- `primary` (the default): once the primary has applied the debit. Replication is
  asynchronous: a primary that dies before its replica has the debit loses it, and a
  replica promoted in its place never heard of a gift its sender was told was sent.
- `aof`: once the primary's append-only file has it on disk (WAITAOF 1 0: Redis 7.2 or
  newer, or Valkey; the append-only file must be on). Survives a restart of that primary
  from its disk, not the loss of its machine.
- `replicas:N`: once N replicas have it (WAIT N). Survives the primary's death when one of
  those replicas is the one promoted (with one replica per primary, it is).

`Durability.confirm(tag)` is the step between a write and its ack: it returns once every
write made so far on the primary serving the hash tag `tag` is as durable as the setting
asks, or raises `NotDurable` after `timeout_ms`. WAIT and WAITAOF wait for the writes of
the connection they are sent on, so each round writes a fence (one small key of that tag,
with an expiry) and waits for it on the same connection: a primary replicates and appends
in order, so every earlier write on it, on any connection, is then as safe as the fence,
a replayed request's first attempt included. Confirmations asked for in the same turn of
the event loop share one round per primary: one fence and one WAIT per batch, not per gift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError, ResponseError

from server.settings import AckDurability
from server.store.connection import Client
from server.store.keys import fence_key

FENCE_TTL_MS = 600_000


class NotDurable(Exception):
    """The write is done but not yet as durable as the setting asks (too few replicas or
    no fsync within the timeout). A retry with the same idempotency key is safe: it
    replays the write and waits again."""


def wait_command(level: AckDurability, timeout_ms: int) -> tuple[Any, ...]:
    if level.level == "aof":
        return ("WAITAOF", 1, 0, timeout_ms)
    return ("WAIT", level.replicas, timeout_ms)


def reached(level: AckDurability, reply: Any) -> bool:
    if level.level == "aof":
        return int(reply[0]) >= 1
    return int(reply) >= level.replicas


class Durability:
    def __init__(self, client: Client, level: AckDurability, *, timeout_ms: int = 1000) -> None:
        self._r = client
        self.level = level
        self._timeout_ms = timeout_ms
        self._pending: dict[str, list[asyncio.Future[None]]] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def confirm(self, tag: str) -> None:
        """Return once the primary serving `tag` ({w17}, {rabc}) has every write made on
        it so far as durable as the setting asks; at once for `primary`. `NotDurable`
        after the timeout; a Redis error as is."""
        if not self.level.waits:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._send)
        self._pending.setdefault(tag, []).append(future)
        await future

    async def confirm_all(self, tags: Sequence[str]) -> None:
        """`confirm` for several tags at once (distinct primaries wait side by side)."""
        if self.level.waits and tags:
            await asyncio.gather(*(self.confirm(tag) for tag in set(tags)))

    def _send(self) -> None:
        asked, self._pending = self._pending, {}
        # One round per primary: the tags it serves share one fence (any of them will do).
        rounds: dict[str, tuple[str, list[asyncio.Future[None]]]] = {}
        for tag, futures in asked.items():
            where = self._primary_name(tag)
            first_tag, waiting = rounds.setdefault(where, (tag, []))
            waiting.extend(futures)
        for fence_tag, futures in rounds.values():
            task = asyncio.get_running_loop().create_task(
                self._round(fence_tag, futures), name="durability-round"
            )
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _primary_name(self, tag: str) -> str:
        if not isinstance(self._r, RedisCluster):
            return ""
        try:
            slot = self._r.keyslot(fence_key(tag))
            return str(self._r.nodes_manager.get_node_from_slot(slot).name)
        except RedisError:
            return tag  # no map yet: a round of its own, which refreshes it

    async def _round(self, tag: str, futures: list[asyncio.Future[None]]) -> None:
        try:
            reply = await self._fence_and_wait(tag)
            error: BaseException | None = None
            if not reached(self.level, reply):
                error = NotDurable(
                    f"not {self.level} within {self._timeout_ms} ms (reached: {reply!r})"
                )
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - each waiting caller gets it
            error = exc
        for future in futures:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
                future.exception()  # read here: a caller that went away leaves no warning

    async def _fence_and_wait(self, tag: str) -> Any:
        key = fence_key(tag)
        fence = ("SET", key, "1", "PX", FENCE_TTL_MS)
        wait = wait_command(self.level, self._timeout_ms)
        if not isinstance(self._r, RedisCluster):
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.execute_command(*fence)
                pipe.execute_command(*wait)
                written, reply = await pipe.execute(raise_on_error=True)
            return reply
        for attempt in range(2):
            node = self._r.nodes_manager.get_node_from_slot(self._r.keyslot(key))
            connection = node.acquire_connection()
            try:
                await connection.send_packed_command(connection.pack_commands([fence, wait]))
                replies: list[Any] = []
                for _ in range(2):
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
            except BaseException:
                await connection.disconnect()
                raise
            finally:
                node.release(connection)
            written, reply = replies
            if isinstance(written, ResponseError):
                # MOVED / ASK: the slot moved since the map was read; read it again.
                if attempt == 0:
                    await self._r.nodes_manager.initialize()
                    continue
                raise written
            if isinstance(reply, ResponseError):
                raise reply
            return reply
        raise AssertionError("unreachable")

    async def problems(self) -> list[str]:
        """What keeps this setting from working on this Redis (checked at start): WAITAOF
        unknown (Redis before 7.2), the append-only file off, fewer replicas than asked
        on some primary. Empty when none."""
        if not self.level.waits:
            return []
        found = []
        for name, node in await self._primaries():
            try:
                if self.level.level == "aof":
                    try:
                        await self._on(node, "WAITAOF", 0, 0, 0)
                    except ResponseError as exc:
                        found.append(
                            f"{name}: WAITAOF is not supported ({exc}); GS_ACK_DURABILITY=aof"
                            " needs Redis 7.2 or newer, or Valkey"
                        )
                        continue
                    config = await self._on(node, "CONFIG", "GET", "appendonly")
                    if isinstance(config, list):
                        config = dict(zip(config[::2], config[1::2], strict=True))
                    value = config.get("appendonly", config.get(b"appendonly"))
                    if _text(value) != "yes":
                        found.append(f"{name}: appendonly is off; GS_ACK_DURABILITY=aof needs it")
                else:
                    info = await self._on(node, "INFO", "replication")
                    count = int(info.get("connected_slaves", 0))
                    if count < self.level.replicas:
                        found.append(
                            f"{name}: {count} replicas connected, GS_ACK_DURABILITY={self.level}"
                            " asks for more: gifts would wait and then be refused"
                        )
            except RedisError as exc:
                found.append(f"{name}: not checked ({exc})")
        return found

    async def _primaries(self) -> list[tuple[str, Any]]:
        if not isinstance(self._r, RedisCluster):
            return [("redis", None)]
        if self._r.get_default_node() is None:
            await self._r.initialize()
        return [(node.name, node) for node in self._r.get_primaries()]

    async def _on(self, node: Any, *args: Any) -> Any:
        if node is None:
            return await self._r.execute_command(*args)
        return await self._r.execute_command(*args, target_nodes=node)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
