"""RoomHub: the per-process fan-out of room events, from Redis to local sockets.

DESIGN section 5. One Redis subscribe connection per process (`RoomChannels`); a room's
channel is subscribed while this process has at least one viewer in it. Events arriving
for a room are coalesced, at most one flush per window per room (an event after a quiet
spell goes out at once; the window is `coalesce_ms`, wider for a room too big to flush
that often within `fanout_frames_per_s`), encoded once per flush, and the same bytes are
offered to every local viewer of the room: written straight into its socket
(`DirectViewer`), or, under a server that allows no such thing, queued for its writer
task (`QueuedViewer`).
Offering never waits; each socket's unsent frames are bounded, and a viewer past the
bound is dropped from the room and told to close (1008) instead of slowing anyone else.

Ordering and exactly-once: events carry the room's `seq`. Per room the hub keeps the
highest seq it has queued and drops anything at or below it, so an event is queued at
most once per viewer. A viewer joins in two steps: `join` (events that arrive from then
on are held for it), then `start` with its welcome and history frames and the seq those
cover; held events above that seq follow, then live ones. When the subscribe connection
is lost, each room's missed events are read back from its history once its channel is
subscribed again, before anything newer is flushed.

Presence: the number of local viewers per room is written with an expiry
(`RoomStore.set_presence`) when it changes and on a heartbeat. `room_state` frames (viewers
summed over processes, top gifters) go out when either changed, at most every
`room_state_interval_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from server import metrics
from server.direct import DirectSocket
from server.errors import Unavailable
from server.protocol import Outgoing, event_kind, event_seq, events_frame, room_state_frame
from server.settings import Settings
from server.store.cancellation import reraise_lost_cancellation
from server.store.channels import RoomChannels
from server.store.connection import Client
from server.store.keys import RoomKeys
from server.store.rooms import RoomStore

log = logging.getLogger(__name__)

# A room's state as the last room_state (or welcome) showed it: viewers and top gifters.
RoomState = tuple[int, list[dict[str, Any]]]


class Viewer:
    """One local socket in one room, as the hub sees it.

    `offer` hands it a frame without waiting. Each socket's unsent frames are bounded by
    `limit_bytes`: a frame offered past that is refused, `overflowed` is set, `on_overflow`
    is called (once), and the socket must then be closed (1008); the hub has already
    stopped offering to it.
    """

    def __init__(self, *, user_id: str | None, limit_bytes: int, max_held_events: int) -> None:
        self.user_id = user_id
        # A flag and a callback rather than an asyncio.Event: a viewer is kept per socket,
        # and every byte of it counts at 5,000 sockets a process.
        self.overflowed = False
        self.on_overflow: Callable[[], object] | None = None
        # The seq the viewer has been shown up to; None until `RoomHub.start`.
        self.floor: int | None = None
        self._limit = limit_bytes
        self._held: list[tuple[int, bytes]] = []
        self._max_held = max_held_events

    def offer(self, frame: Outgoing) -> bool:
        """Pass `frame` on without waiting; False (and `overflowed` set) if it did not fit."""
        if self.overflowed:
            return False
        if self._put(frame):
            return True
        self.overflow()
        return False

    def overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            if self.on_overflow is not None:
                self.on_overflow()

    def _put(self, frame: Outgoing) -> bool:
        raise NotImplementedError

    def hold(self, seqs: list[int], events: list[bytes]) -> bool:
        if len(self._held) + len(events) > self._max_held:
            self.overflow()
            return False
        self._held.extend(zip(seqs, events, strict=True))
        return True

    def release(self, floor: int) -> list[bytes]:
        """Start receiving live events above `floor`; the held ones above it, in order."""
        self.floor = floor
        held, self._held = self._held, []
        return [event for seq, event in held if seq > floor]


class DirectViewer(Viewer):
    """Frames go straight into the socket's transport (`server.direct`); its write buffer
    is the bounded queue."""

    def __init__(self, socket: DirectSocket, **options: Any) -> None:
        super().__init__(**options)
        self.socket = socket

    def _put(self, frame: Outgoing) -> bool:
        return self.socket.write(frame, limit_bytes=self._limit)


class QueuedViewer(Viewer):
    """Frames wait in a queue, bounded by their bytes, for the socket's own writer task
    (`next_frame`): for servers that give no direct access to the socket."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.queued_bytes = 0

    def _put(self, frame: Outgoing) -> bool:
        if self.queued_bytes >= self._limit:
            return False
        self.queue.put_nowait(frame)
        self.queued_bytes += len(frame.data)
        return True

    async def next_frame(self) -> Outgoing:
        frame = await self.queue.get()
        self.queued_bytes -= len(frame.data)
        return frame


class LocalRoom:
    """A room with viewers in this process."""

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.channel = RoomKeys(room_id).channel.encode()
        self.viewers: dict[Viewer, None] = {}
        # Done once events published on the channel reach this process (and, after a
        # lost connection, once the missed ones have been read back).
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, bytes] = {}
        self.delivered_seq: int | None = None
        self.flush_handle: asyncio.TimerHandle | None = None
        self.last_flush = -1e9
        self.recovering = False
        self.lost_count = 0
        self.recovery: asyncio.Task[None] | None = None
        self.live = True
        self.top: list[dict[str, Any]] | None = None
        self.top_dirty = False
        self.state_sent: RoomState | None = None


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
        self._presence_dirty: set[str] = set()
        self._presence_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Events waiting for a flush, per room, beyond which the hub stops waiting for a
        # recovery to finish (only a Redis that fails for long gets there).
        self._max_pending = 4 * settings.history_events + 1000

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
                tg.create_task(self._presence_loop(), name="hub-presence")
                tg.create_task(self._room_state_loop(), name="hub-room-state")
        finally:
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    for room_id in list(self._rooms):
                        await self._store.set_presence(room_id, self._process_id, 0)

    # --- viewers ----------------------------------------------------------------------

    def viewer(self, user_id: str | None, socket: DirectSocket | None = None) -> Viewer:
        """A viewer that writes to `socket` directly, or (without one) queues its frames
        for a writer task."""
        s = self._settings
        options: dict[str, Any] = {
            "user_id": user_id,
            "limit_bytes": s.socket_buffer_bytes,
            "max_held_events": s.history_events + 1000,
        }
        if socket is not None:
            return DirectViewer(socket, **options)
        return QueuedViewer(**options)

    async def join(self, room_id: str, viewer: Viewer, *, timeout: float = 5.0) -> None:
        """Add `viewer` to the room and return once the room's live events reach this
        process (or the viewer was taken out meanwhile: then `start` returns False);
        they are held for the viewer until `start`. `Unavailable` if Redis does not
        confirm the subscription within `timeout` seconds (the viewer is then out)."""
        room = self._rooms.get(room_id)
        if room is None:
            room = LocalRoom(room_id)
            self._rooms[room_id] = room
            self._by_channel[room.channel] = room
            self._channels.subscribe(room.channel)
        room.viewers[viewer] = None
        self._presence_changed(room_id)
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
                self._drop_slow(room, viewer)
                return False
        held = viewer.release(floor)
        if held and not viewer.offer(Outgoing(events_frame(held))):
            self._drop_slow(room, viewer)
            return False
        if room.state_sent is None:
            room.state_sent = state
        return True

    def leave(self, room_id: str, viewer: Viewer) -> None:
        """Take `viewer` out of the room (idempotent); the last one out unsubscribes."""
        room = self._rooms.get(room_id)
        if room is None or viewer not in room.viewers:
            return
        del room.viewers[viewer]
        self._presence_changed(room_id)
        if room.viewers:
            return
        del self._rooms[room_id]
        del self._by_channel[room.channel]
        if room.flush_handle is not None:
            room.flush_handle.cancel()
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

    def subscribed_rooms(self) -> set[str]:
        """Rooms whose channel this process wants (the ones with local viewers)."""
        return {room.room_id for room in self._rooms.values()}

    def _drop_slow(self, room: LocalRoom, viewer: Viewer) -> None:
        viewer.overflow()
        metrics.SLOW_READERS_CLOSED.inc()
        self.leave(room.room_id, viewer)

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
        if room.delivered_seq is not None and seq <= room.delivered_seq:
            return
        room.pending[seq] = event
        kind = event_kind(event)
        if kind == "gift":
            room.top_dirty = True
        elif kind == "room_ended":
            room.live = False
        if room.recovering:
            if len(room.pending) > self._max_pending:
                log.warning("room %s: recovery is late; flushing without it", room.room_id)
                self._flush(room, force=True)
            return
        if room.flush_handle is None:
            # At most one flush per window: an event after a quiet spell goes out at once
            # (with whatever arrives in the same loop iteration), later ones wait for the
            # window to close and share its frame.
            loop = asyncio.get_running_loop()
            delay = max(0.0, room.last_flush + self._window(room) - loop.time())
            room.flush_handle = loop.call_later(delay, self._flush, room)

    def _window(self, room: LocalRoom) -> float:
        """Seconds between a room's flushes: `coalesce_ms`, or longer for a room whose
        local viewers would otherwise take more than `fanout_frames_per_s` frames a
        second (5,000 viewers at the default 25,000: 200 ms)."""
        s = self._settings
        return max(s.coalesce_ms / 1000, len(room.viewers) / s.fanout_frames_per_s)

    def _flush(self, room: LocalRoom, *, force: bool = False) -> None:
        room.flush_handle = None
        if (room.recovering and not force) or not room.pending:
            return
        started = time.perf_counter()
        room.last_flush = asyncio.get_running_loop().time()
        seqs = sorted(room.pending)
        events = [room.pending[seq] for seq in seqs]
        room.pending.clear()
        room.delivered_seq = seqs[-1]
        first, last = seqs[0], seqs[-1]
        shared: Outgoing | None = None
        frames = 0
        sent_bytes = 0
        for viewer in list(room.viewers):
            floor = viewer.floor
            if floor is None:
                if not viewer.hold(seqs, events):
                    self._drop_slow(room, viewer)
                continue
            if floor >= last:
                continue
            if floor < first:
                if shared is None:
                    shared = Outgoing(events_frame(events))
                frame = shared
            else:
                # Only for a viewer whose history overlapped this flush.
                frame = Outgoing(
                    events_frame([e for s, e in zip(seqs, events, strict=True) if s > floor])
                )
            if viewer.offer(frame):
                frames += 1
                sent_bytes += len(frame.data)
            else:
                self._drop_slow(room, viewer)
        metrics.BROADCAST_FRAMES.inc(frames)
        metrics.BROADCAST_BYTES.inc(sent_bytes)
        metrics.FANOUT_FLUSH_SECONDS.observe(time.perf_counter() - started)

    # --- the subscribe connection's news ----------------------------------------------

    def _on_lost(self) -> None:
        loop = asyncio.get_running_loop()
        for room in self._rooms.values():
            room.recovering = True
            room.lost_count += 1
            if room.ready.done():
                room.ready = loop.create_future()

    def _on_subscribed(self, channel: bytes) -> None:
        room = self._by_channel.get(channel)
        if room is None:
            return
        if room.recovering:
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
                since = room.delivered_seq
                if since is None:
                    floors = [v.floor for v in room.viewers if v.floor is not None]
                    since = min(floors) if floors else None
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
            room.recovering = False
            if not room.ready.done():
                room.ready.set_result(None)
            self._flush(room)
        finally:
            room.recovery = None

    # --- presence and room_state ------------------------------------------------------

    def _presence_changed(self, room_id: str) -> None:
        self._presence_dirty.add(room_id)
        self._presence_wake.set()

    async def _presence_loop(self) -> None:
        loop = asyncio.get_running_loop()
        heartbeat = max(0.5, self._settings.presence_ttl_s / 3)
        next_beat = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await self._presence_wake.wait()
            self._presence_wake.clear()
            due = self._presence_dirty
            if loop.time() >= next_beat:
                due = due | set(self._rooms)
                next_beat = loop.time() + heartbeat
            self._presence_dirty = set()
            for room_id in due:
                try:
                    await self._store.set_presence(
                        room_id, self._process_id, self.local_viewers(room_id)
                    )
                except Exception as exc:  # noqa: BLE001 - retried on the next round
                    log.warning("presence not written (%s)", exc)
                    self._presence_dirty |= due
                    await asyncio.sleep(0.5)
                    break
                finally:
                    reraise_lost_cancellation()

    async def _room_state_loop(self) -> None:
        interval = self._settings.room_state_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._send_room_states()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("room_state round failed (%s)", exc)
            reraise_lost_cancellation()

    async def _send_room_states(self) -> None:
        rooms = [room for room in self._rooms.values() if room.state_sent is not None]
        if not rooms:
            return
        counts = await self._store.viewers([room.room_id for room in rooms])
        for room in rooms:
            if room.top_dirty or room.top is None:
                room.top_dirty = False
                try:
                    room.top = await self._store.top(room.room_id)
                except BaseException:
                    room.top_dirty = True
                    raise
            state: RoomState = (counts.get(room.room_id, 0), room.top)
            if state == room.state_sent or self._rooms.get(room.room_id) is not room:
                continue
            room.state_sent = state
            frame = Outgoing(room_state_frame(viewers=state[0], top=state[1]))
            for viewer in list(room.viewers):
                if viewer.floor is not None and not viewer.offer(frame):
                    self._drop_slow(room, viewer)
