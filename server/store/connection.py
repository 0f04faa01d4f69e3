"""Connecting to Redis or a Redis Cluster, the Lua scripts loaded once per client,
`run_pipelined`, which runs many calls in one round trip, and `ScriptBatch`, which
gathers the calls of many concurrent requests into one such round trip."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.settings import Settings

# redis-py's Redis or RedisCluster (its annotations are not usable under mypy strict).
Client: TypeAlias = Any

SCRIPT_NAMES = (
    "recharge",
    "set_spending_limit",
    "debit_gift",
    "publish_gift",
    "credit_gift",
    "refund_gift",
    "request_cashout",
    "finish_cashout",
    "admit_chat",
    "post_chat",
    "open_socket",
    "end_room",
    "room_welcome",
)

# No flags: Redis treats each script as a write and refuses it whole, at its start, when
# memory is full (instead of failing at its first write, after earlier ones stayed).
SHEBANG = "#!lua\n"


@dataclass(frozen=True, slots=True)
class Scripts:
    """Each script runs by EVALSHA; a NOSCRIPT (Redis restarted, its script cache
    flushed) reloads every script before anything is retried (`run_pipelined`, or
    redis-py's own reload for a single call)."""

    recharge: AsyncScript
    set_spending_limit: AsyncScript
    debit_gift: AsyncScript
    publish_gift: AsyncScript
    credit_gift: AsyncScript
    refund_gift: AsyncScript
    request_cashout: AsyncScript
    finish_cashout: AsyncScript
    admit_chat: AsyncScript
    post_chat: AsyncScript
    open_socket: AsyncScript
    end_room: AsyncScript
    room_welcome: AsyncScript

    def all(self) -> list[AsyncScript]:
        return [getattr(self, name) for name in SCRIPT_NAMES]

    async def reload(self, client: Client) -> None:
        """Load every script again (after a NOSCRIPT: the cache was lost, so all were)."""
        for script in self.all():
            script.sha = await client.script_load(script.script)


def load_scripts(client: Client) -> Scripts:
    """Every script: the shebang line, the shared helpers of `_common.lua`, then the
    script itself (a script sent by EVALSHA cannot include another)."""
    lua = resources.files("server.store") / "lua"
    shared = (lua / "_common.lua").read_text("utf-8")
    loaded: dict[str, Any] = {
        name: client.register_script(SHEBANG + shared + (lua / f"{name}.lua").read_text("utf-8"))
        for name in SCRIPT_NAMES
    }
    return Scripts(**loaded)


def connect(settings: Settings, url: str | None = None) -> Client:
    """A client for `url` (or the settings' Redis or cluster), answering bytes.

    Timeouts are short so an unreachable Redis is an error within a second or two,
    not a hang; the pool reconnects by itself when Redis is back.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "health_check_interval": 30,
    }
    if settings.redis_cluster_urls and url is None:
        # Every URL is a seed: a process that starts while the first node is down asks
        # the next (the client then learns every node from the cluster itself).
        first, *others = settings.redis_cluster_urls
        seeds = [
            ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379)
            for parts in map(urlsplit, others)
        ]
        return RedisCluster.from_url(first, startup_nodes=seeds or None, **options)
    target = url or settings.redis_url
    if target is None:
        raise ValueError("no Redis URL: start the embedded server first")
    # A bounded pool that waits for a free connection instead of failing under bursts.
    pool = BlockingConnectionPool.from_url(target, max_connections=64, timeout=5, **options)
    return Redis.from_pool(pool)


# What a store that cannot answer raises: redis-py's errors (a cluster client's own, such
# as "cannot be connected", are not RedisErrors), and the socket layer's (OSError).
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


def is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, STORE_ERRORS)


def publish_command(client: Client) -> str:
    """The command the scripts publish room events with: SPUBLISH on a Redis Cluster
    (sharded pub/sub: the event goes to its room's shard only, where the hub's SSUBSCRIBE
    connections wait, `server.store.channels`), PUBLISH on one Redis (a classic PUBLISH on
    a cluster would be broadcast to every node)."""
    return "SPUBLISH" if isinstance(client, RedisCluster) else "PUBLISH"


@dataclass(frozen=True, slots=True)
class Call:
    """One command for `run_pipelined`: a script's EVALSHA (`script` set, with its `keys`
    and `args`) or a plain command (`args` only)."""

    args: Sequence[Any]
    keys: Sequence[Any] = ()
    script: AsyncScript | None = None

    def command(self) -> tuple[Any, ...]:
        if self.script is None:
            return tuple(self.args)
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)


def script_call(script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Call:
    return Call(args, keys, script)


def command(*args: Any) -> Call:
    return Call(args)


async def run_pipelined(client: Client, scripts: Scripts, calls: Sequence[Call]) -> list[Any]:
    """Run `calls` in one non-transactional pipeline (one round trip; each call atomic on
    its own as always) and return each one's answer or exception, in order. A call that
    met NOSCRIPT did nothing: every script is loaded again, then those calls run once
    more, in their order. On a Redis Cluster, whose client pipelines no scripts, the
    calls go concurrently instead, each to its own node."""
    if not calls:
        return []
    if isinstance(client, RedisCluster):
        return list(
            await asyncio.gather(
                *(
                    call.script(keys=call.keys, args=call.args)
                    if call.script is not None
                    else client.execute_command(*call.args)
                    for call in calls
                ),
                return_exceptions=True,
            )
        )
    results = await _pipeline(client, [call.command() for call in calls])
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        await scripts.reload(client)
        again = await _pipeline(client, [calls[i].command() for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results


async def _pipeline(client: Client, commands: list[tuple[Any, ...]]) -> list[Any]:
    """`commands` on one pooled connection, written at once and their replies read in
    order: each reply, or its error reply as a `ResponseError` (NOSCRIPT as redis-py's
    `NoScriptError`). Packed by hiredis, in C (redis-py's asyncio client packs in Python,
    which was a tenth of a gift's CPU), with one timeout for the whole round trip. A
    connection that fails or times out midway is dropped (its replies would be out of
    step) and the error raised, as redis-py's pipeline does."""
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        try:
            async with asyncio.timeout(conn.socket_timeout):
                await conn.send_packed_command(
                    b"".join([hiredis.pack_command(args) for args in commands])
                )
                results: list[Any] = []
                for _ in commands:
                    try:
                        results.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        results.append(exc)
        except TimeoutError:
            raise RedisTimeoutError(
                f"no answer from Redis within {conn.socket_timeout} s"
            ) from None
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    return results


class ScriptBatch:
    """Script calls made in the same turn of the event loop go to Redis together, in one
    pipeline, in the order they were made: under many concurrent gifts the per-command
    cost of the client (a pooled connection, a round trip) is paid once per batch, not
    once per call. A call's answer or error is its own; a batch that fails as a whole
    (Redis unreachable) fails each of its calls with that error. A caller that is
    cancelled does not take its call back: once made, it runs."""

    def __init__(self, client: Client, scripts: Scripts) -> None:
        self._client = client
        self._scripts = scripts
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._running: set[asyncio.Task[None]] = set()

    def call(self, call: Call) -> asyncio.Future[Any]:
        """Make a call; the future is its answer (or its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((call, future))
        if len(self._pending) == 1:
            loop.call_soon(self._send)
        return future

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._run(batch), name="script-batch")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            results = await run_pipelined(self._client, self._scripts, [c for c, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
                future.exception()  # read here, so a caller that went away leaves no warning
            else:
                future.set_result(result)
