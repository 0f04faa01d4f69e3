"""The hub on the real Redis, without sockets: viewers are the hub's `QueuedViewer`s.

Encoded once per flush for everyone, subscribed only while someone watches, a full queue
drops only its viewer, a lost subscription is recovered from history, presence and
room_state follow the viewers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from server.hub import RoomHub
from server.protocol import Outgoing
from server.services import Services
from server.settings import Settings
from server.store.keys import RoomKeys
from server.viewers import QueuedViewer

WAIT_S = 15.0


@contextlib.asynccontextmanager
async def running_hub(
    services: Services, settings: Settings, **options: Any
) -> AsyncIterator[RoomHub]:
    hub = RoomHub(
        rooms=services.rooms,
        client=services.redis,
        settings=settings,
        process_id="hubtest-" + secrets.token_hex(4),
        **options,
    )
    task = asyncio.create_task(hub.run())
    try:
        yield hub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def hub(services: Services, settings: Settings) -> AsyncIterator[RoomHub]:
    async with running_hub(services, settings) as h:
        yield h


async def new_room(services: Services) -> str:
    return await services.rooms.create(creator_id="ucreator", creator_name="C", title="hub test")


def new_viewer(hub: RoomHub) -> QueuedViewer:
    viewer = hub.viewer(None)
    assert isinstance(viewer, QueuedViewer)  # no socket given: frames wait in its queue
    return viewer


async def watch(hub: RoomHub, services: Services, room_id: str) -> QueuedViewer:
    """Join and start a viewer the way the endpoint does (without history)."""
    viewer = new_viewer(hub)
    await hub.join(room_id, viewer)
    seq = int((await services.rooms.room(room_id))["seq"])
    assert hub.start(room_id, viewer, [], floor=seq, state=(0, []))
    return viewer


async def say(services: Services, room_id: str, text: str) -> int:
    return await services.rooms.post_chat(
        room_id, user_id="utalker", name="T", request_id=secrets.token_hex(8), text=text
    )


async def next_frame(viewer: QueuedViewer) -> bytes:
    async with asyncio.timeout(WAIT_S):
        return (await viewer.next_frame()).data


async def frames_until(
    viewer: QueuedViewer, done: Callable[[list[dict[str, Any]]], bool]
) -> list[bytes]:
    """Frames from the viewer's queue until the events in them satisfy `done`."""
    frames: list[bytes] = []
    events: list[dict[str, Any]] = []
    while not done(events):
        frame = await next_frame(viewer)
        frames.append(frame)
        decoded = orjson.loads(frame)
        if decoded["type"] == "events":
            events.extend(decoded["events"])
    return frames


def events_of(frames: list[bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for frame in frames:
        decoded = orjson.loads(frame)
        if decoded["type"] == "events":
            out.extend(decoded["events"])
    return out


def up_to(seq: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: any(e["seq"] >= seq for e in events)


async def eventually(check: Callable[[], Any], *, what: str) -> None:
    """Poll an outcome that the hub reaches on its own (presence, unsubscribe)."""
    async with asyncio.timeout(WAIT_S):
        while not await check():
            await asyncio.sleep(0.02)


async def test_one_flush_is_encoded_once_and_queued_to_every_viewer(
    hub: RoomHub, services: Services
) -> None:
    room_id = await new_room(services)
    viewers = [await watch(hub, services, room_id) for _ in range(3)]
    last = 0
    for i in range(5):
        last = await say(services, room_id, f"line {i}")
    received = [await frames_until(v, up_to(last)) for v in viewers]
    assert [e["text"] for e in events_of(received[0])] == [f"line {i}" for i in range(5)]
    assert [e["seq"] for e in events_of(received[0])] == list(range(1, 6))
    for frames in received[1:]:
        assert len(frames) == len(received[0])
        # The very same bytes: encoded once, not once per viewer.
        assert all(a is b for a, b in zip(frames, received[0], strict=True))


async def test_a_room_is_subscribed_only_while_it_has_local_viewers(
    hub: RoomHub, services: Services
) -> None:
    room_id = await new_room(services)
    channel = RoomKeys(room_id).channel

    async def subscribers() -> int:
        [(_, count)] = await services.redis.pubsub_numsub(channel)
        return int(count)

    assert await subscribers() == 0
    first = await watch(hub, services, room_id)
    second = await watch(hub, services, room_id)
    assert await subscribers() == 1  # one connection per process, however many viewers
    assert hub.subscribed_rooms() >= {room_id}
    hub.leave(room_id, first)
    assert await subscribers() == 1
    hub.leave(room_id, second)
    await eventually(lambda: _is(subscribers, 0), what="unsubscribed")
    assert room_id not in hub.subscribed_rooms()
    # Nothing of the room reaches this process any more; watching again subscribes again.
    await say(services, room_id, "to nobody")
    again = await watch(hub, services, room_id)
    seq = await say(services, room_id, "to you")
    assert [e["text"] for e in events_of(await frames_until(again, up_to(seq)))] == ["to you"]


async def _is(check: Callable[[], Any], value: object) -> bool:
    return bool(await check() == value)


async def test_a_full_queue_drops_that_viewer_and_no_other(
    services: Services, settings: Settings
) -> None:
    small = dataclasses.replace(settings, socket_buffer_bytes=1)
    async with running_hub(services, small) as hub:
        room_id = await new_room(services)
        slow = await watch(hub, services, room_id)
        fast = await watch(hub, services, room_id)
        seqs = []
        for i in range(10):
            seq = await say(services, room_id, f"line {i}")
            seqs.append(seq)
            # One flush per line: the fast viewer reads each before the next is said.
            await frames_until(fast, up_to(seq))
        assert slow.overflowed
        assert hub.local_viewers(room_id) == 1
        # Bounded: past one byte unsent, nothing more was queued.
        assert slow.queue.qsize() == 1
        seq = await say(services, room_id, "still here")
        assert [e["text"] for e in events_of(await frames_until(fast, up_to(seq)))] == [
            "still here"
        ]


async def test_a_lost_subscription_recovers_missed_events_once_and_in_order(
    services: Services, settings: Settings
) -> None:
    # A slow reconnect, so the lines said right after the kill fall in the gap.
    async with running_hub(services, settings, reconnect_backoff_s=0.5) as hub:
        room_id = await new_room(services)
        viewer = await watch(hub, services, room_id)
        frames = []
        for i in range(3):
            frames += await frames_until(viewer, up_to(await say(services, room_id, f"a{i}")))
        killed = await kill_hub_connection(services, hub)
        assert killed == 1
        last = 0
        for i in range(5):
            last = await say(services, room_id, f"b{i}")
        frames += await frames_until(viewer, up_to(last))
        last = await say(services, room_id, "after")
        frames += await frames_until(viewer, up_to(last))
        events = events_of(frames)
        assert [e["seq"] for e in events] == list(range(1, 10))
        assert [e["text"] for e in events] == [
            *(f"a{i}" for i in range(3)),
            *(f"b{i}" for i in range(5)),
            "after",
        ]


async def kill_hub_connection(services: Services, hub: RoomHub) -> int:
    name = f"giftstream-hub-{hub.process_id}"
    listing = (await services.redis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")).decode()
    killed = 0
    for line in listing.splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        if fields.get("name") == name:
            killed += int(
                await services.redis.execute_command("CLIENT", "KILL", "ID", fields["id"])
            )
    return killed


async def test_presence_counts_this_process_viewers(hub: RoomHub, services: Services) -> None:
    room_id = await new_room(services)

    async def count() -> int:
        return (await services.rooms.viewers([room_id]))[room_id]

    viewers = [await watch(hub, services, room_id) for _ in range(3)]
    await eventually(lambda: _is(count, 3), what="three viewers")
    hub.leave(room_id, viewers[0])
    await eventually(lambda: _is(count, 2), what="two viewers")
    for v in viewers[1:]:
        hub.leave(room_id, v)
    await eventually(lambda: _is(count, 0), what="no viewer")


async def test_room_state_follows_the_viewer_count(hub: RoomHub, services: Services) -> None:
    room_id = await new_room(services)
    first = new_viewer(hub)
    await hub.join(room_id, first)
    assert hub.start(room_id, first, [], floor=0, state=(1, []))
    await watch(hub, services, room_id)
    while True:
        state = orjson.loads(await next_frame(first))
        if state["type"] == "room_state" and state["viewers"] == 2:
            break
    assert state == {"type": "room_state", "viewers": 2, "top": []}


async def test_the_hub_knows_when_a_live_has_ended(hub: RoomHub, services: Services) -> None:
    room_id = await new_room(services)
    viewer = await watch(hub, services, room_id)
    assert hub.is_live(room_id)
    seq = await services.rooms.end(room_id, user_id="ucreator")
    [event] = events_of(await frames_until(viewer, up_to(seq)))
    assert event["kind"] == "room_ended"
    assert not hub.is_live(room_id)


async def test_events_held_for_a_joining_viewer_come_after_its_welcome(
    hub: RoomHub, services: Services
) -> None:
    room_id = await new_room(services)
    viewer = new_viewer(hub)
    await hub.join(room_id, viewer)
    said = [await say(services, room_id, f"early {i}") for i in range(3)]
    other = await watch(hub, services, room_id)  # sees none of the early ones
    await frames_until(other, up_to(await say(services, room_id, "late")))
    # This viewer's welcome covered up to the first line; the rest are held for it.
    assert hub.start(room_id, viewer, [Outgoing(b"WELCOME")], floor=said[0], state=(2, []))
    assert await next_frame(viewer) == b"WELCOME"
    events = events_of(await frames_until(viewer, up_to(said[-1] + 1)))
    assert [e["text"] for e in events] == ["early 1", "early 2", "late"]


async def test_leaving_and_joining_at_once_keeps_the_room_subscribed(
    hub: RoomHub, services: Services
) -> None:
    room_id = await new_room(services)
    for i in range(30):
        first = hub.viewer(None)
        joining = asyncio.create_task(hub.join(room_id, first))
        if i % 2:
            await joining  # subscribed, then unsubscribed and subscribed again at once
            hub.leave(room_id, first)
        else:
            await asyncio.sleep(0)  # leaves while its SUBSCRIBE is still on the way
            hub.leave(room_id, first)
            await joining
        viewer = await watch(hub, services, room_id)
        seq = await say(services, room_id, f"round {i}")
        assert [e["text"] for e in events_of(await frames_until(viewer, up_to(seq)))] == [
            f"round {i}"
        ]
        hub.leave(room_id, viewer)


async def test_a_quiet_room_flushes_at_once_whatever_its_window(
    services: Services, settings: Settings
) -> None:
    # A share so small that any measured flush cost makes the window its cap, 30 s: the
    # first line after a quiet spell must still go out at once (this test waits 15 s at
    # most), and so must the first line of a new room.
    paced = dataclasses.replace(settings, fanout_cpu_share=1e-9, fanout_max_window_ms=30_000)
    async with running_hub(services, paced) as hub:
        room_id = await new_room(services)
        viewer = await watch(hub, services, room_id)
        await watch(hub, services, room_id)
        first = await say(services, room_id, "after a quiet spell")
        [frame] = await frames_until(viewer, up_to(first))
        assert [e["text"] for e in events_of([frame])] == ["after a quiet spell"]
        assert viewer.queue.empty()


async def test_a_room_coalesces_events_within_its_window_into_one_frame(
    services: Services, settings: Settings
) -> None:
    # Window capped at 1 s: a quiet room's first line at once, the next five in one frame.
    paced = dataclasses.replace(settings, fanout_cpu_share=1e-9, fanout_max_window_ms=1000)
    async with running_hub(services, paced) as hub:
        room_id = await new_room(services)
        viewer = await watch(hub, services, room_id)
        await watch(hub, services, room_id)
        last = 0
        for i in range(6):
            last = await say(services, room_id, f"line {i}")
        frames = await frames_until(viewer, up_to(last))
        assert [e["text"] for e in events_of(frames)] == [f"line {i}" for i in range(6)]
        assert sum(orjson.loads(f)["type"] == "events" for f in frames) <= 2


async def test_close_all_asks_every_viewer_to_close_with_the_code_in_batches(
    hub: RoomHub, services: Services
) -> None:
    rooms = [await new_room(services) for _ in range(2)]
    viewers = [await watch(hub, services, rooms[i % 2]) for i in range(5)]
    told: list[int] = []
    for i, viewer in enumerate(viewers):
        viewer.on_close = lambda i=i: told.append(i)
    assert await hub.close_all(1012, "restarting", batch=2, pause_s=0.01) == 5
    assert sorted(told) == list(range(5))
    assert all(v.closing == (1012, "restarting") for v in viewers)
    assert hub.local_viewers(rooms[0]) == hub.local_viewers(rooms[1]) == 0
    # Nothing more is offered to them.
    assert not viewers[0].offer(Outgoing(b"late"))


async def test_viewers_of_a_room_whose_feed_is_lost_too_long_are_closed_1013(
    services: Services, settings: Settings
) -> None:
    # The subscribe connection comes back only after 30 s: the feed is lost meanwhile.
    quick = dataclasses.replace(settings, feed_lost_close_s=0.5)
    async with running_hub(services, quick, reconnect_backoff_s=30) as hub:
        room_id = await new_room(services)
        viewer = await watch(hub, services, room_id)
        assert await kill_hub_connection(services, hub) == 1
        async with asyncio.timeout(WAIT_S):
            while viewer.closing is None:
                await asyncio.sleep(0.05)
        assert viewer.closing[0] == 1013 and "since=" in viewer.closing[1]
        assert hub.local_viewers(room_id) == 0
