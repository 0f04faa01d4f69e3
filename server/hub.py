"""RoomHub: the per-process fan-out of room events, from Redis to local sockets.

DESIGN section 5. One Redis subscribe connection per process (`RoomChannels`); a room's
channel is subscribed while this process has at least one viewer in it. Events arriving
for a room wait in its `RoomSequence` until the room's next flush, which `FlushPacer`
times: at once after a quiet spell, else spaced so that the room's writes stay within its
share of the CPU (`fanout_cpu_share`, divided among the rooms that flushed in the last
second). A flush's events are encoded once (`Batch`), and the same bytes are offered to
every local viewer of the room (`server.viewers`), in slices of at most
`fanout_slice_ms` across turns of the loop (`Broadcaster`), so acks and reads go on
while a big room is written. Offering never waits; each socket's unsent bytes are
bounded, and a viewer past the bound is dropped from the room and told to close (1008)
instead of slowing anyone else.

Ordering and exactly-once are `server.sequencing`'s rules: a viewer joins in two steps,
`join` (events that arrive from then on are held for it), then `start` with its welcome
and history frames and the seq those cover; held events above that seq follow, then live
ones. When the subscribe connection is lost, each room's missed events are read back from
its history once its channel is subscribed again, before anything newer is flushed.

Presence and room_state: `server.presence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from server import metrics
from server.broadcast import Broadcast, Broadcaster
from server.direct import Bundle, DirectSocket
from server.errors import Unavailable
from server.loop_lag import LoopLag
from server.presence import RoomPresence, RoomState
from server.protocol import Outgoing, event_kind, event_seq, events_frame
from server.sequencing import Batch, FlushPacer, RoomSequence, WriteCost
from server.settings import Settings
from server.store.cancellation import reraise_lost_cancellation
from server.store.channels import RoomChannels
from server.store.connection import Client
from server.store.keys import RoomKeys
from server.store.rooms import RoomStore
from server.viewers import (
    CLOSE_TOO_SLOW,
    TOO_SLOW,
    DirectViewer,
    Frames,
    QueuedViewer,
    Viewer,
    size_of,
)

log = logging.getLogger(__name__)

# How far back a flush counts a room as busy, when the fan-out's share is divided.
_ACTIVE_S = 1.0
CLOSE_FEED_LOST = 1013
FEED_LOST = "the live feed is unavailable; reconnect with since=<seq>"


class LocalRoom:
    """A room with viewers in this process."""

    def __init__(self, room_id: str, *, max_pending: int) -> None:
        self.room_id = room_id
        self.channel = RoomKeys(room_id).channel.encode()
        self.viewers: dict[Viewer, None] = {}
        # Done once events published on the channel reach this process (and, after a
        # lost connection, once the missed ones have been read back).
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sequence = RoomSequence(max_pending=max_pending)
        self.pacer = FlushPacer()
        self.flush_handle: asyncio.Handle | None = None
        # The flush being written (the next one waits for it).
        self.writing: _Flush | None = None
        # A room_state waiting to ride with the next flush.
        self.state: Outgoing | None = None
        self.lost_count = 0
        # When its subscription was lost, until the missed events are read back.
        self.lost_at: float | None = None
        self.recovery: asyncio.Task[None] | None = None
        self.live = True


class _Flush(Broadcast):
    """One flush of a room to every viewer the room had when it began: its batch of
    events, and its pending room_state, which rides in the same write (a room_state on
    its own costs as many writes as a flush)."""

    __slots__ = (
        "hub",
        "room",
        "batch",
        "state",
        "started",
        "targets",
        "index",
        "writes",
        "bytes",
        "event_bytes",
        "_with_state",
    )

    def __init__(
        self,
        hub: RoomHub,
        room: LocalRoom,
        batch: Batch | None,
        state: Outgoing | None,
        started: float,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.room = room
        self.batch = batch
        self.state = state
        self.started = started
        self.targets = list(room.viewers)
        self.index = 0
        self.writes = 0
        self.bytes = 0
        self.event_bytes = 0
        # The shared events frame and the state, as one bundle built once.
        self._with_state: Bundle | None = None

    def _frames_for(self, events: Outgoing | None) -> Frames | None:
        state = self.state
        if state is None or events is None:
            return events if events is not None else state
        if self.batch is not None and events is self.batch.shared:
            if self._with_state is None:
                self._with_state = Bundle(events, state)
            return self._with_state
        return Bundle(events, state)

    def step(self, deadline: float) -> bool:
        room, batch, targets = self.room, self.batch, self.targets
        present = room.viewers
        max_held = self.hub.max_held_events
        clock = time.perf_counter
        i, n = self.index, len(targets)
        while i < n:
            viewer = targets[i]
            i += 1
            if viewer not in present:
                continue  # left meanwhile
            if viewer.floor is None:
                # Not started: its welcome is on the way (and shows the room's state).
                if batch is not None and not viewer.hold(batch, max_held=max_held):
                    self.hub.drop_slow(room, viewer)
                continue
            events = viewer.advance(batch) if batch is not None else None
            frames = self._frames_for(events)
            if frames is not None:
                if viewer.offer(frames):
                    self.writes += 1
                    self.bytes += size_of(frames)
                    if events is not None:
                        self.event_bytes += len(events.data)
                else:
                    self.hub.drop_slow(room, viewer)
            if clock() >= deadline:
                break
        self.index = i
        return i >= n

    def finish(self) -> None:
        metrics.BROADCAST_FRAMES.inc(self.writes)
        metrics.BROADCAST_BYTES.inc(self.bytes)
        metrics.FANOUT_FLUSH_SECONDS.observe(self.cost_s)
        # What most viewers were written (a viewer whose history overlapped got less).
        writes = max(1, self.writes)
        hub = self.hub
        hub.write_cost.record(
            writes=self.writes, frame_bytes=self.bytes // writes, cost_s=self.cost_s
        )
        hub.write_measured()
        if self.batch is not None:
            self.room.pacer.record(started=self.started, frame_bytes=self.event_bytes // writes)
        hub.flushed(self.room)


class RoomHub:
    def __init__(
        self,
        *,
        rooms: RoomStore,
        client: Client,
        settings: Settings,
        process_id: str,
        reconnect_backoff_s: float = 0.05,
    ) -> None:
        self._store = rooms
        self._settings = settings
        self._process_id = process_id
        self._rooms: dict[str, LocalRoom] = {}
        self._by_channel: dict[bytes, LocalRoom] = {}
        self._channels = RoomChannels(
            client,
            on_message=self._on_message,
            on_subscribed=self._on_subscribed,
            on_lost=self._on_lost,
            client_name=f"giftstream-hub-{process_id}",
            min_backoff_s=reconnect_backoff_s,
        )
        self._presence = RoomPresence(
            store=rooms,
            settings=settings,
            process_id=process_id,
            local_viewers=self.local_viewers,
            rooms=lambda: list(self._rooms),
            send_state=self._send_state,
        )
        self._broadcaster = Broadcaster(slice_s=settings.fanout_slice_ms / 1000)
        # What one socket write costs here, learned from every broadcast (the pacing's
        # measure).
        self.write_cost = WriteCost()
        # The loop's stalls, for /metrics: what slicing the flushes is for.
        self._loop_lag = LoopLag()
        self._tasks: set[asyncio.Task[None]] = set()
        # Events waiting for a flush, per room, beyond which the hub stops waiting for a
        # recovery to finish (only a Redis that fails for long gets there).
        self._max_pending = 4 * settings.history_events + 1000
        self.max_held_events = settings.history_events + 1000
        self._max_window_s = settings.fanout_max_window_ms / 1000
        self._active_rooms = 1
        self._active_counted_at = -1e9

    @property
    def process_id(self) -> str:
        """Names this process in presence, and its subscribe connection in Redis
        (`CLIENT LIST`: giftstream-hub-<process_id>)."""
        return self._process_id

    # --- lifetime ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run the subscribe connection, presence and room_state until cancelled; on the
        way out, withdraw this process's viewers from presence."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._channels.run(), name="hub-channels")
                tg.create_task(self._presence.run(), name="hub-presence")
                tg.create_task(self._loop_lag.run(), name="hub-loop-lag")
                if self._settings.feed_lost_close_s > 0:
                    tg.create_task(self._watch_feeds(), name="hub-feeds")
        finally:
            self._broadcaster.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._presence.withdraw(list(self._rooms))

    # --- viewers ----------------------------------------------------------------------

    def viewer(self, user_id: str | None, socket: DirectSocket | None = None) -> Viewer:
        """A viewer that writes to `socket` directly, or (without one) queues its frames
        for a writer task."""
        limit = self._settings.socket_buffer_bytes
        if socket is not None:
            return DirectViewer(socket, user_id=user_id, limit_bytes=limit)
        return QueuedViewer(user_id=user_id, limit_bytes=limit)

    async def join(self, room_id: str, viewer: Viewer, *, timeout: float = 5.0) -> None:
        """Add `viewer` to the room and return once the room's live events reach this
        process (or the viewer was taken out meanwhile: then `start` returns False);
        they are held for the viewer until `start`. `Unavailable` if Redis does not
        confirm the subscription within `timeout` seconds (the viewer is then out)."""
        room = self._rooms.get(room_id)
        if room is None:
            room = LocalRoom(room_id, max_pending=self._max_pending)
            self._rooms[room_id] = room
            self._by_channel[room.channel] = room
            self._channels.subscribe(room.channel)
        room.viewers[viewer] = None
        self._presence.viewers_changed(room_id)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(room.ready)
        except TimeoutError:
            self.leave(room_id, viewer)
            raise Unavailable("the live feed is unavailable; try again shortly") from None
        except BaseException:
            self.leave(room_id, viewer)
            raise

    def start(
        self, room_id: str, viewer: Viewer, frames: list[Outgoing], *, floor: int, state: RoomState
    ) -> bool:
        """Queue `frames` (welcome, then history) to a joined viewer, then the events held
        for it above `floor`, and from now on live events. `state` is what its welcome
        showed. False if the viewer is no longer in the room (dropped as too slow)."""
        room = self._rooms.get(room_id)
        if room is None or viewer not in room.viewers:
            return False
        for frame in frames:
            if not viewer.offer(frame):
                self.drop_slow(room, viewer)
                return False
        held = viewer.release(floor)
        if held and not viewer.offer(Outgoing(events_frame(held))):
            self.drop_slow(room, viewer)
            return False
        self._presence.welcomed(room_id, state)
        return True

    def leave(self, room_id: str, viewer: Viewer) -> None:
        """Take `viewer` out of the room (idempotent); the last one out unsubscribes."""
        room = self._rooms.get(room_id)
        if room is None or viewer not in room.viewers:
            return
        del room.viewers[viewer]
        self._presence.viewers_changed(room_id)
        if room.viewers:
            return
        del self._rooms[room_id]
        del self._by_channel[room.channel]
        self._presence.forget(room_id)
        if room.flush_handle is not None:
            room.flush_handle.cancel()
            room.flush_handle = None
        if room.recovery is not None:
            room.recovery.cancel()
        if not room.ready.done():
            # Wake anyone still joining: they are out already, and `start` will say so.
            room.ready.set_result(None)
        self._channels.unsubscribe(room.channel)

    def is_live(self, room_id: str) -> bool:
        """False once this process has seen the room's `room_ended` event."""
        room = self._rooms.get(room_id)
        return room is None or room.live

    def local_viewers(self, room_id: str) -> int:
        room = self._rooms.get(room_id)
        return len(room.viewers) if room is not None else 0

    def flushing(self, room_id: str) -> int | None:
        """The last seq of the room's flush being written right now (None: none is)."""
        room = self._rooms.get(room_id)
        if room is None or room.writing is None or room.writing.batch is None:
            return None
        return room.writing.batch.last

    def subscribed_rooms(self) -> set[str]:
        """Rooms whose channel this process wants (the ones with local viewers)."""
        return {room.room_id for room in self._rooms.values()}

    def drop_slow(self, room: LocalRoom, viewer: Viewer) -> None:
        """Out of the room, told to close as too slow (1008)."""
        metrics.SLOW_READERS_CLOSED.inc()
        self._drop(room, viewer, CLOSE_TOO_SLOW, TOO_SLOW)

    def _drop(self, room: LocalRoom, viewer: Viewer, code: int, reason: str) -> None:
        viewer.close(code, reason)
        self.leave(room.room_id, viewer)

    async def close_all(
        self, code: int, reason: str, *, batch: int = 500, pause_s: float = 0.05
    ) -> int:
        """Ask every local viewer's socket to close with `code` (1012 when the server
        stops), `batch` of them at a time with `pause_s` between batches, so their
        reconnects elsewhere come spread out. Returns how many were asked. Viewers that
        join meanwhile are not (call it once no new sockets are accepted)."""
        asked = 0
        for room in list(self._rooms.values()):
            for viewer in list(room.viewers):
                if viewer not in room.viewers:
                    continue
                self._drop(room, viewer, code, reason)
                asked += 1
                if asked % batch == 0 and pause_s > 0:
                    await asyncio.sleep(pause_s)
        return asked

    # --- events -----------------------------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes) -> None:
        room = self._by_channel.get(channel)
        if room is None:
            return  # sent before our UNSUBSCRIBE took effect
        try:
            seq = event_seq(data)
        except ValueError:
            log.warning("room %s: an event without a seq on its channel", room.room_id)
            return
        self._accept(room, seq, data)

    def _accept(self, room: LocalRoom, seq: int, event: bytes) -> None:
        if not room.sequence.accept(seq, event):
            return
        kind = event_kind(event)
        if kind == "gift":
            self._presence.gift_seen(room.room_id)
        elif kind == "room_ended":
            room.live = False
        self._schedule(room)

    def _share(self, now: float) -> float:
        """The fan-out's share of the CPU for one room: `fanout_cpu_share` divided among
        the rooms that flushed in the last second (counted at most every 100 ms)."""
        if now - self._active_counted_at > 0.1:
            self._active_counted_at = now
            since = now - _ACTIVE_S
            self._active_rooms = max(
                1,
                sum(
                    1
                    for r in self._rooms.values()
                    if r.pacer.last_start is not None and r.pacer.last_start >= since
                ),
            )
        return self._settings.fanout_cpu_share / self._active_rooms

    def _schedule(self, room: LocalRoom) -> None:
        """Arrange the room's next flush, if it has something to flush and none is
        arranged or being written."""
        if room.flush_handle is not None or room.writing is not None:
            return
        if not room.sequence.ready() and room.state is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        delay = room.pacer.delay(
            now,
            viewers=len(room.viewers),
            share=self._share(now),
            cost=self.write_cost,
            max_window_s=self._max_window_s,
        )
        if delay <= 0:
            # At once, with whatever else arrives in this turn of the loop.
            room.flush_handle = loop.call_soon(self._flush, room)
        else:
            room.flush_handle = loop.call_later(delay, self._flush, room)

    def _flush(self, room: LocalRoom) -> None:
        room.flush_handle = None
        if self._rooms.get(room.room_id) is not room:
            return
        sequence = room.sequence
        if sequence.recovering and sequence.overdue:
            log.warning("room %s: recovery is late; flushing without it", room.room_id)
        batch = sequence.take(force=sequence.overdue)
        state, room.state = room.state, None
        if batch is None and state is None:
            return
        flush = _Flush(self, room, batch, state, asyncio.get_running_loop().time())
        room.writing = flush
        self._broadcaster.submit(flush)

    def write_measured(self) -> None:
        """The write cost changed: shown in /metrics."""
        cost = self.write_cost
        metrics.FANOUT_WRITE_COST_SECONDS.labels(part="per_write").set(cost.per_write_s)
        metrics.FANOUT_WRITE_COST_SECONDS.labels(part="per_byte").set(cost.per_byte_s)

    def flushed(self, room: LocalRoom) -> None:
        """A flush of `room` has been written to every viewer: the next may follow."""
        room.writing = None
        if self._rooms.get(room.room_id) is room:
            self._schedule(room)

    def _send_state(self, room_id: str, frame: Outgoing) -> None:
        """A room_state for the room's started viewers: with its next flush (a newer one
        replaces one not yet written)."""
        room = self._rooms.get(room_id)
        if room is not None:
            room.state = frame
            self._schedule(room)

    # --- the subscribe connection's news ----------------------------------------------

    def _on_lost(self) -> None:
        loop = asyncio.get_running_loop()
        for room in self._rooms.values():
            room.sequence.recovering = True
            room.lost_count += 1
            if room.lost_at is None:
                room.lost_at = loop.time()
            if room.ready.done():
                room.ready = loop.create_future()

    def _on_subscribed(self, channel: bytes) -> None:
        room = self._by_channel.get(channel)
        if room is None:
            return
        if room.sequence.recovering:
            if room.recovery is None:
                room.recovery = asyncio.get_running_loop().create_task(
                    self._recover(room), name=f"hub-recover-{room.room_id}"
                )
                self._tasks.add(room.recovery)
                room.recovery.add_done_callback(self._tasks.discard)
        elif not room.ready.done():
            room.ready.set_result(None)

    async def _recover(self, room: LocalRoom) -> None:
        """Read back from the room's history what the lost connection missed, then let
        flushes go on. Retries while Redis fails; ends early if the connection is lost
        again (the next subscription starts another round)."""
        try:
            while True:
                lost = room.lost_count
                since = room.sequence.recover_since(v.floor for v in room.viewers)
                try:
                    if since is not None:
                        events, complete = await self._store.events_since(room.room_id, since)
                        if not complete:
                            log.warning(
                                "room %s: events after %d were trimmed from history before "
                                "they could be recovered",
                                room.room_id,
                                since,
                            )
                        for event in events:
                            self._accept(room, event_seq(event), event)
                except Exception as exc:  # noqa: BLE001 - Redis may still be coming back
                    log.warning("room %s: recovery failed (%s); retrying", room.room_id, exc)
                    await asyncio.sleep(0.2)
                    continue
                finally:
                    reraise_lost_cancellation()
                if room.lost_count == lost:
                    break
                if not self._channels.is_subscribed(room.channel):
                    return
            room.sequence.recovering = False
            room.lost_at = None
            if not room.ready.done():
                room.ready.set_result(None)
            self._schedule(room)
        finally:
            room.recovery = None

    async def _watch_feeds(self) -> None:
        """Close the viewers of a room whose feed has been lost (its subscription gone,
        its missed events not read back) for `feed_lost_close_s`, with 1013: a host cut
        off from Redis should send its viewers to reconnect elsewhere, not keep them
        watching nothing."""
        limit = self._settings.feed_lost_close_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, limit / 2))
            now = loop.time()
            for room in list(self._rooms.values()):
                if room.lost_at is None or now - room.lost_at < limit:
                    continue
                log.warning(
                    "room %s: live feed lost for %.0f s; closing its %d local viewers (1013)",
                    room.room_id,
                    now - room.lost_at,
                    len(room.viewers),
                )
                for viewer in list(room.viewers):
                    self._drop(room, viewer, CLOSE_FEED_LOST, FEED_LOST)
