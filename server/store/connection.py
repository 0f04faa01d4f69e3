"""Connecting to Redis or a Redis Cluster, and the Lua scripts loaded once per client."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.commands.core import AsyncScript

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
    lua = resources.files("server.store") / "lua"
    loaded: dict[str, Any] = {
        name: client.register_script((lua / f"{name}.lua").read_text("utf-8"))
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
