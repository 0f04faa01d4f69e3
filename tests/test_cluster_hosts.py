"""Three server hosts in one room, each in a network namespace of its own with its own
link to a Redis Cluster (three primaries, three replicas) in another: the phases of
`python -m scale.hosts`, shortened. Skipped, with its reason, where namespaces cannot be
made (not root, no iproute2, a sandbox that refuses them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from scale import hosts
from scale.netns import unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces: {REASON}")


async def test_three_hosts_one_room_with_a_partition_and_a_slow_link(tmp_path: Path) -> None:
    report = hosts.Report()
    with hosts.rig(tmp_path, slowable=(3,)) as rig:
        async with asyncio.timeout(240):
            crowd = await hosts.gather_crowd(rig, watchers_per_host=2, senders_per_host=1)
            try:
                # Every event reaches every watcher once, in order; the viewer count is
                # the sum over hosts; each acked gift is spent and shown once.
                await hosts.phase_storm(rig, crowd, report, gifts=10)
                # Host 2 cut off from Redis mid-load, then healed.
                await hosts.phase_partition(rig, crowd, report, before_s=1, cut_s=9, after_s=2)
                # Host 3's link slowed: the others are not held back by it.
                await hosts.phase_slow(rig, crowd, report, rtt_ms=200, seconds=1.5)
            finally:
                await crowd.close()
        await asyncio.sleep(1.5)  # past the sweeper's age threshold: nothing in flight
        ok, out = rig.audit()
    assert ok, out
    assert report.problems == []
    partition = report.facts["partition"]
    # Host 2's senders were told (unavailable) or cut off, and moved to another host.
    assert partition["unavailable"] > 0 or partition["sender_moves"], partition
    # Its watchers were closed (1013: the feed is lost) and went on elsewhere with since,
    # missing nothing (the storm's problems above are empty).
    assert 1013 in partition["watcher_closes"], partition
    assert partition["serves_again"]
    assert report.facts["slow_others_not_held"]
