"""The ordering and pacing rules of a room's fan-out, with no I/O.

As h11's `_state.py` opens, "everything that affects the state machine must live here":
which events a viewer is shown, in what order, exactly once, and when a room may flush.
The hub (`server.hub`) only moves events in and frames out; these classes decide.

Events carry the room's `seq`. Per room (`RoomSequence`):
- an event is *pending* from its arrival until the room's next flush takes it; an event
  at or below the room's *delivered seq* (the highest seq a flush has taken), or already
  pending, is a repeat and is dropped: each event is taken by at most one flush;
- a flush (`take`) takes every pending event, oldest first, as one `Batch`;
- while the room is *recovering* (its subscription was lost and the missed events are
  being read back from history) nothing is taken, unless so much is pending that waiting
  longer would cost more than the gap (`overdue`).

Per viewer (`ViewerOrder`): a viewer joins before its welcome is read, so that nothing
published meanwhile is missed. Until it *starts* (its welcome and history are out), what
flushes bring is *held* for it; `release(floor)` starts it at `floor`, the seq its welcome
and history cover, and returns the held events above the floor, in order. From then on a
flush's batch is shown to it above its floor only (`Batch.frame_for`), and its floor
rises with every batch.

Pacing (`FlushPacer`, `WriteCost`): an event for a quiet room goes out at once; a busy
room's flushes are spaced just enough that writing them takes at most `share` of a core
(the fan-out's share divided among the rooms that flushed recently), so the events
meanwhile are coalesced into one frame. What a write costs (a fixed part and a part per
byte) is the hub's own measure of its recent broadcasts; coalescing saves only the fixed
part, so the window is derived from it and from what the room's payload already takes.
"""

from __future__ import annotations

from collections.abc import Iterable

from server.protocol import Outgoing, events_frame


class Batch:
    """The events of one flush, oldest first, and the frames that show them."""

    __slots__ = ("seqs", "events", "_shared")

    def __init__(self, seqs: list[int], events: list[bytes]) -> None:
        self.seqs = seqs
        self.events = events
        self._shared: Outgoing | None = None

    @property
    def shared(self) -> Outgoing | None:
        """The frame every viewer below the batch gets (once one has been built)."""
        return self._shared

    @property
    def first(self) -> int:
        return self.seqs[0]

    @property
    def last(self) -> int:
        return self.seqs[-1]

    def frame_for(self, floor: int) -> Outgoing | None:
        """The frame for a viewer shown up to `floor`: None if it has seen every event in
        the batch; the one shared frame (the same object, encoded once) for every viewer
        below the first; a frame of its own only for a viewer whose history overlapped
        the batch."""
        if floor >= self.last:
            return None
        if floor < self.first:
            if self._shared is None:
                self._shared = Outgoing(events_frame(self.events))
            return self._shared
        return Outgoing(
            events_frame([e for s, e in zip(self.seqs, self.events, strict=True) if s > floor])
        )


class ViewerOrder:
    """One viewer's place in its room's sequence: held events until it starts, then its
    floor (the seq it has been shown up to)."""

    __slots__ = ("floor", "_held")

    def __init__(self) -> None:
        # None until `release`: the viewer's welcome is not out yet.
        self.floor: int | None = None
        self._held: list[tuple[int, bytes]] = []

    @property
    def started(self) -> bool:
        return self.floor is not None

    def hold(self, batch: Batch, *, max_held: int) -> bool:
        """Keep `batch` for the viewer until it starts. False (nothing kept) if that would
        hold more than `max_held` events: the viewer is then too slow to start."""
        if len(self._held) + len(batch.events) > max_held:
            return False
        self._held.extend(zip(batch.seqs, batch.events, strict=True))
        return True

    def release(self, floor: int) -> list[bytes]:
        """Start at `floor`: the held events above it, in order, each once."""
        self.floor = floor
        held, self._held = self._held, []
        shown = floor
        out: list[bytes] = []
        for seq, event in held:
            if seq > shown:
                out.append(event)
                shown = seq
        self.floor = shown
        return out

    def advance(self, batch: Batch) -> Outgoing | None:
        """What a started viewer is to be written for `batch` (None: nothing), its floor
        moved past it."""
        assert self.floor is not None, "hold() a viewer that has not started"
        frame = batch.frame_for(self.floor)
        if frame is not None:
            self.floor = batch.last
        return frame


class RoomSequence:
    """One room's events between their arrival and their flush."""

    __slots__ = ("pending", "delivered_seq", "recovering", "_max_pending")

    def __init__(self, *, max_pending: int) -> None:
        self.pending: dict[int, bytes] = {}
        # The highest seq a flush has taken; None before the first.
        self.delivered_seq: int | None = None
        self.recovering = False
        self._max_pending = max_pending

    def accept(self, seq: int, event: bytes) -> bool:
        """Take an arriving event; False if it is a repeat (already taken or pending)."""
        if self.delivered_seq is not None and seq <= self.delivered_seq:
            return False
        if seq in self.pending:
            return False
        self.pending[seq] = event
        return True

    @property
    def overdue(self) -> bool:
        """True when a recovery has made so many events wait that they must go out
        without it (only a Redis that fails for long gets there)."""
        return len(self.pending) > self._max_pending

    def ready(self) -> bool:
        """Whether a flush would take anything now."""
        return bool(self.pending) and (not self.recovering or self.overdue)

    def take(self, *, force: bool = False) -> Batch | None:
        """Every pending event, oldest first, as one batch (None: nothing to take, or the
        room is recovering and `force` is not given)."""
        if not self.pending or (self.recovering and not force):
            return None
        seqs = sorted(self.pending)
        events = [self.pending[seq] for seq in seqs]
        self.pending.clear()
        self.delivered_seq = seqs[-1]
        return Batch(seqs, events)

    def recover_since(self, floors: Iterable[int | None]) -> int | None:
        """The seq after which history must be read back to fill a gap: the delivered
        seq, or before any flush the lowest floor of the started viewers (None: no one
        has been shown anything yet, there is no gap to fill)."""
        if self.delivered_seq is not None:
            return self.delivered_seq
        started = [floor for floor in floors if floor is not None]
        return min(started) if started else None


def _smooth(old: float, new: float, weight: float) -> float:
    return new if old == 0.0 else weight * new + (1 - weight) * old


class WriteCost:
    """What writing one frame into one socket costs this process, learned from the
    broadcasts the hub times: a fixed part per write (the call, the syscall, the kernel's
    per-packet work) and a part per byte (copying and carrying the payload). Coalescing
    changes only the first: a frame of ten events costs one write, ten events' bytes.

    Small frames (a room_state, a quiet room's event) tell the fixed part; big ones
    (a busy room's coalesced events), what each byte adds to it."""

    __slots__ = ("per_write_s", "per_byte_s", "_smoothing")

    SMALL_BYTES = 2048
    BIG_BYTES = 16384

    def __init__(self, *, smoothing: float = 0.2) -> None:
        self.per_write_s = 0.0
        self.per_byte_s = 0.0
        self._smoothing = smoothing

    def record(self, *, writes: int, frame_bytes: int, cost_s: float) -> None:
        """`writes` writes of a `frame_bytes` frame took `cost_s` seconds in all."""
        if writes <= 0:
            return
        each = cost_s / writes
        w = self._smoothing
        if frame_bytes <= self.SMALL_BYTES or self.per_write_s == 0.0:
            fixed = max(0.0, each - self.per_byte_s * frame_bytes)
            self.per_write_s = _smooth(self.per_write_s, fixed, w)
        elif frame_bytes >= self.BIG_BYTES:
            per_byte = max(0.0, each - self.per_write_s) / frame_bytes
            self.per_byte_s = _smooth(self.per_byte_s, per_byte, w)


class FlushPacer:
    """When a room may flush next: at once after a quiet spell; else once the time
    since its last flush began makes the room's fan-out fit its `share` of a core.

    A room of V viewers receiving R bytes a second each costs V * per_byte * R of the
    CPU whatever the window (the payload), plus V * per_write for each flush. Flushing
    every w seconds, its fan-out takes V * per_byte * R + V * per_write / w of a core; the
    window is the least w for which that is within `share`:
        w = V * per_write / (share - V * per_byte * R).
    A room whose payload alone takes most of its share (more than 3/4) cannot be made to
    fit by waiting longer: its flushes are then spaced so that their fixed part takes a
    quarter of the share, w = V * per_write / (share / 4). Always at most `max_window_s`.
    """

    __slots__ = ("last_start", "bytes_per_s", "_smoothing")

    def __init__(self, *, smoothing: float = 0.3) -> None:
        self.last_start: float | None = None
        # The bytes of events a viewer of the room is sent a second, smoothed.
        self.bytes_per_s = 0.0
        self._smoothing = smoothing

    def record(self, *, started: float, frame_bytes: int) -> None:
        """A flush that began at `started` carried a frame of `frame_bytes`."""
        if self.last_start is not None and started > self.last_start:
            rate = frame_bytes / (started - self.last_start)
            self.bytes_per_s = _smooth(self.bytes_per_s, rate, self._smoothing)
        self.last_start = started

    def window(self, *, viewers: int, share: float, cost: WriteCost, max_window_s: float) -> float:
        """The least time from one flush's start to the next's, for `viewers` viewers
        and `share` (0 < share <= 1) of a core."""
        if share <= 0:
            return max_window_s
        payload = viewers * cost.per_byte_s * self.bytes_per_s
        spare = max(share - payload, share / 4)
        return min(max_window_s, viewers * cost.per_write_s / spare)

    def delay(
        self, now: float, *, viewers: int, share: float, cost: WriteCost, max_window_s: float
    ) -> float:
        """Seconds from `now` until the room may flush (0: at once)."""
        if self.last_start is None:
            return 0.0
        window = self.window(viewers=viewers, share=share, cost=cost, max_window_s=max_window_s)
        return max(0.0, self.last_start + window - now)
