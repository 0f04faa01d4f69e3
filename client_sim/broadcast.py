"""Broadcast latency without touching the protocol: from a sender's send to a viewer's
receive of the room event that the gift became.

Room events carry no `request_id`, only the room's `seq` and the sender's `from.user_id`.
Two facts make the match exact all the same:

1. The server serves one connection's frames one at a time, and a refused gift's error
   frame is queued before the next gift is even read, while an accepted gift's event
   travels through Redis pub/sub and the fan-out. So, on one connection, the sender's own
   gift events arrive in the order it sent the gifts that were not refused. `SentGifts`
   is that queue: the sender pops its oldest unrefused send when it sees its own event,
   and so learns which `(room, seq)` its send became.
2. Every viewer of the room, sender included, receives the event with the same
   `(room, seq)`. `BroadcastTimer` maps `(room, seq)` to the send time as soon as the
   sender knows it; a viewer that receives the event first parks its receive time there
   and is answered when the sender registers.

Only senders in the same process are timed (their send times are in memory here);
events from elsewhere stay parked until they expire and are counted as unmatched.
Pure and synchronous: the asyncio bot and the gevent Locust users both use it, passing
their own clock readings (one monotonic clock, e.g. `time.perf_counter()`).
"""

from __future__ import annotations

from collections import OrderedDict, deque

RoomSeq = tuple[str, int]


class SentGifts:
    """One sender's gifts on one connection that may still become room events, oldest
    first: `(request_id, sent_at)`."""

    def __init__(self, *, keep_s: float = 30.0) -> None:
        self._queue: deque[tuple[str, float]] = deque()
        self._keep_s = keep_s

    def __len__(self) -> int:
        return len(self._queue)

    def sent(self, request_id: str, sent_at: float) -> None:
        self._queue.append((request_id, sent_at))
        # A gift whose event never came (a lost connection, a crash) must not shift
        # every later match: drop what is far too old to still arrive.
        while self._queue and sent_at - self._queue[0][1] > self._keep_s:
            self._queue.popleft()

    def refused(self, request_id: str) -> None:
        """The gift was refused: it will never be an event."""
        for i, (rid, _) in enumerate(self._queue):
            if rid == request_id:
                del self._queue[i]
                return

    def own_event(self) -> tuple[str, float] | None:
        """The sender saw one of its own events: the `(request_id, sent_at)` it is."""
        if not self._queue:
            return None
        return self._queue.popleft()

    def clear(self) -> None:
        self._queue.clear()


class BroadcastTimer:
    """Send times of room events, by `(room_id, seq)`, shared by every viewer of a process.

    `received` answers a receipt's latency, or parks it until `sent` names the event's send
    time (then `sent` answers the parked latencies). Entries older than `keep_s` are
    dropped; parked receipts dropped that way are counted in `unmatched`.
    """

    def __init__(self, *, keep_s: float = 30.0) -> None:
        self._keep_s = keep_s
        self._sent: OrderedDict[RoomSeq, float] = OrderedDict()
        # (room, seq) -> (first parked at, receive times)
        self._parked: OrderedDict[RoomSeq, tuple[float, list[float]]] = OrderedDict()
        self._last_expiry = float("-inf")
        self.unmatched = 0

    def sent(self, room_id: str, seq: int, sent_at: float, now: float) -> list[float]:
        """The event `(room_id, seq)` was sent at `sent_at`: the latencies (seconds) of
        the receipts that arrived before this was known."""
        self._expire(now)
        key = (room_id, seq)
        self._sent[key] = sent_at
        parked = self._parked.pop(key, None)
        if parked is None:
            return []
        return [at - sent_at for at in parked[1]]

    def received(self, room_id: str, seq: int, at: float) -> float | None:
        """A viewer received `(room_id, seq)` at `at`: its latency in seconds if the send
        time is known, else None (parked, answered later by `sent`)."""
        self._expire(at)
        key = (room_id, seq)
        sent_at = self._sent.get(key)
        if sent_at is not None:
            return at - sent_at
        entry = self._parked.get(key)
        if entry is None:
            self._parked[key] = (at, [at])
        else:
            entry[1].append(at)
        return None

    def pending(self) -> int:
        """Receipts still waiting for their send time."""
        return sum(len(times) for _, times in self._parked.values())

    def _expire(self, now: float) -> None:
        if now - self._last_expiry < 1.0:
            return
        self._last_expiry = now
        cutoff = now - self._keep_s
        # Both maps are in insertion order, which is time order: stop at the first young one.
        while self._sent:
            key, sent_at = next(iter(self._sent.items()))
            if sent_at >= cutoff:
                break
            del self._sent[key]
        while self._parked:
            key, (first, times) = next(iter(self._parked.items()))
            if first >= cutoff:
                break
            del self._parked[key]
            self.unmatched += len(times)
