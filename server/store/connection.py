"""Connecting to Redis or a Redis Cluster, the Lua scripts loaded once per client, and
`ScriptBatch`, which runs the script calls of many concurrent requests in one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from server.settings import Settings

# redis-py's Redis or RedisCluster (its annotations are not usable under mypy strict).
Client: TypeAlias = Any

SCRIPT_NAMES = (
    "recharge",
    "set_spending_limit",
    "debit_gift",
    "credit_gift",
    "settle_gift",
    "request_cashout",
    "finish_cashout",
    "publish_gift",
    "post_chat",
    "end_room",
)


@dataclass(frozen=True, slots=True)
class Scripts:
    """Each script runs by EVALSHA; redis-py reloads it on NOSCRIPT (after a restart)."""

    recharge: AsyncScript
    set_spending_limit: AsyncScript
    debit_gift: AsyncScript
    credit_gift: AsyncScript
    settle_gift: AsyncScript
    request_cashout: AsyncScript
    finish_cashout: AsyncScript
    publish_gift: AsyncScript
    post_chat: AsyncScript
    end_room: AsyncScript


def load_scripts(client: Client) -> Scripts:
    """Every script, with the shared helpers of `_common.lua` in front of it (a script sent
    by EVALSHA cannot include another)."""
    lua = resources.files("server.store") / "lua"
    shared = (lua / "_common.lua").read_text("utf-8")
    loaded: dict[str, Any] = {
        name: client.register_script(shared + (lua / f"{name}.lua").read_text("utf-8"))
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
        return RedisCluster.from_url(settings.redis_cluster_urls[0], **options)
    target = url or settings.redis_url
    if target is None:
        raise ValueError("no Redis URL: start the embedded server first")
    # A bounded pool that waits for a free connection instead of failing under bursts.
    pool = BlockingConnectionPool.from_url(target, max_connections=64, timeout=5, **options)
    return Redis.from_pool(pool)


class ScriptCall(NamedTuple):
    script: AsyncScript
    keys: Sequence[Any]
    args: Sequence[Any]


async def run_pipelined(client: Client, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run `calls` in one non-transactional pipeline (one round trip; each call by
    EVALSHA, atomic on its own as always) and return each one's answer or exception, in
    order. A call that met NOSCRIPT (Redis restarted without its scripts) did nothing:
    its script is loaded and that call runs once more. On a Redis Cluster, whose client
    pipelines no scripts, the calls go concurrently instead, each to its own node."""
    if isinstance(client, RedisCluster):
        return list(
            await asyncio.gather(
                *(call.script(keys=call.keys, args=call.args) for call in calls),
                return_exceptions=True,
            )
        )
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {calls[i].script for i in missing}:
            script.sha = await client.script_load(script.script)
        async with client.pipeline(transaction=False) as pipe:
            for i in missing:
                call = calls[i]
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            again = await pipe.execute(raise_on_error=False)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results


class ScriptBatch:
    """Script calls made in the same turn of the event loop go to Redis together, in one
    pipeline, in the order they were made: under many concurrent gifts the per-command
    cost of the client (a pooled connection, a round trip) is paid once per batch, not
    once per call. A call's answer or error is its own; a batch that fails as a whole
    (Redis unreachable) fails each of its calls with that error. A caller that is
    cancelled does not take its call back: once made, it runs."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._pending: list[tuple[ScriptCall, asyncio.Future[Any]]] = []
        self._running: set[asyncio.Task[None]] = set()

    def call(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        """Make a call; the future is its answer (or its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((ScriptCall(script, keys, args), future))
        if len(self._pending) == 1:
            loop.call_soon(self._send)
        return future

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._run(batch), name="script-batch")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[ScriptCall, asyncio.Future[Any]]]) -> None:
        try:
            results = await run_pipelined(self._client, [call for call, _ in batch])
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
