"""The fan-out's ordering and pacing rules as plain functions (`server.sequencing`): no
loop, no Redis, no sockets, no clock but the numbers passed in."""

from __future__ import annotations

import orjson

from server.loop_lag import LoopLag
from server.protocol import Outgoing
from server.sequencing import Batch, FlushPacer, RoomSequence, ViewerOrder


def ev(seq: int) -> bytes:
    return b'{"seq":%d,"kind":"chat","text":"line %d"}' % (seq, seq)


def seqs_in(frame: Outgoing | None) -> list[int]:
    if frame is None:
        return []
    decoded = orjson.loads(frame.data)
    assert decoded["type"] == "events"
    return [e["seq"] for e in decoded["events"]]


def seqs_of(events: list[bytes]) -> list[int]:
    return [orjson.loads(e)["seq"] for e in events]


def room(**options: int) -> RoomSequence:
    return RoomSequence(max_pending=options.get("max_pending", 100))


def started(floor: int) -> ViewerOrder:
    viewer = ViewerOrder()
    assert viewer.release(floor) == []
    return viewer


# --- ordering and exactly once -----------------------------------------------------------


def test_a_flush_takes_every_pending_event_oldest_first() -> None:
    r = room()
    for seq in (3, 1, 2):
        assert r.accept(seq, ev(seq))
    batch = r.take()
    assert batch is not None
    assert batch.seqs == [1, 2, 3] and seqs_of(batch.events) == [1, 2, 3]
    assert r.delivered_seq == 3
    assert r.take() is None  # nothing pending


def test_an_event_is_taken_once_however_often_it_arrives() -> None:
    r = room()
    assert r.accept(1, ev(1))
    assert not r.accept(1, ev(1))  # pending already
    r.take()
    assert not r.accept(1, ev(1))  # delivered already
    assert r.accept(2, ev(2))
    batch = r.take()
    assert batch is not None and batch.seqs == [2]


def test_a_started_viewer_is_shown_each_batch_above_its_floor_once() -> None:
    viewer = started(0)
    first = Batch([1, 2], [ev(1), ev(2)])
    assert seqs_in(viewer.advance(first)) == [1, 2]
    assert viewer.advance(first) is None  # the same batch again shows nothing
    assert seqs_in(viewer.advance(Batch([3], [ev(3)]))) == [3]
    assert viewer.floor == 3


def test_viewers_below_a_batch_share_one_frame_and_an_overlapping_one_gets_its_own() -> None:
    batch = Batch([5, 6, 7], [ev(5), ev(6), ev(7)])
    a, b, overlapping, ahead = started(0), started(4), started(6), started(7)
    frame_a, frame_b = a.advance(batch), b.advance(batch)
    assert frame_a is frame_b  # encoded once for everyone below the batch
    assert seqs_in(frame_a) == [5, 6, 7]
    own = overlapping.advance(batch)
    assert own is not frame_a and seqs_in(own) == [7]
    assert ahead.advance(batch) is None


# --- hold and release ------------------------------------------------------------------


def test_a_joining_viewer_holds_batches_and_starts_above_its_welcome() -> None:
    r = room()
    viewer = ViewerOrder()
    assert not viewer.started
    for seqs in ([1, 2], [3], [4, 5]):
        for seq in seqs:
            r.accept(seq, ev(seq))
        batch = r.take()
        assert batch is not None and viewer.hold(batch, max_held=10)
    # Its welcome (and history) covered up to 3: it is shown 4 and 5, in order, once.
    assert seqs_of(viewer.release(3)) == [4, 5]
    assert viewer.started and viewer.floor == 5
    r.accept(5, ev(5))  # a repeat: dropped by the room
    r.accept(6, ev(6))
    batch = r.take()
    assert batch is not None and batch.seqs == [6]
    assert seqs_in(viewer.advance(batch)) == [6]


def test_a_welcome_that_covers_everything_held_releases_nothing() -> None:
    viewer = ViewerOrder()
    assert viewer.hold(Batch([1, 2], [ev(1), ev(2)]), max_held=10)
    assert viewer.release(9) == []
    assert viewer.floor == 9
    assert viewer.advance(Batch([8, 9], [ev(8), ev(9)])) is None


def test_a_viewer_that_would_hold_too_much_is_refused() -> None:
    viewer = ViewerOrder()
    assert viewer.hold(Batch([1, 2], [ev(1), ev(2)]), max_held=3)
    assert not viewer.hold(Batch([3, 4], [ev(3), ev(4)]), max_held=3)
    assert seqs_of(viewer.release(0)) == [1, 2]  # what was kept is intact


# --- resume after a lost subscription --------------------------------------------------


def test_nothing_is_taken_while_recovering_and_the_gap_is_filled_in_order() -> None:
    r = room()
    viewer = started(0)
    for seq in (1, 2):
        r.accept(seq, ev(seq))
    batch = r.take()
    assert batch is not None and seqs_in(viewer.advance(batch)) == [1, 2]
    # The subscription is lost; 3 and 4 are missed, 5 arrives live once subscribed again.
    r.recovering = True
    r.accept(5, ev(5))
    assert not r.ready() and r.take() is None
    assert r.recover_since([viewer.floor]) == 2
    for seq in (3, 4, 5):  # history read back from 2, overlapping the live one
        r.accept(seq, ev(seq))
    r.recovering = False
    batch = r.take()
    assert batch is not None and seqs_in(viewer.advance(batch)) == [3, 4, 5]


def test_before_any_flush_recovery_starts_from_the_lowest_started_floor() -> None:
    r = room()
    assert r.recover_since([None, 7, 4]) == 4
    assert r.recover_since([None]) is None  # no one has been shown anything: no gap


def test_a_recovery_too_late_lets_the_events_go_without_it() -> None:
    r = room(max_pending=3)
    r.recovering = True
    for seq in (10, 11, 12):
        r.accept(seq, ev(seq))
    assert not r.overdue and not r.ready()
    r.accept(13, ev(13))
    assert r.overdue and r.ready()
    batch = r.take(force=True)
    assert batch is not None and batch.seqs == [10, 11, 12, 13]
    assert not r.accept(9, ev(9))  # read back too late: below what went out


# --- pacing ----------------------------------------------------------------------------


def test_a_quiet_room_flushes_at_once() -> None:
    pacer = FlushPacer()
    assert pacer.delay(100.0, viewers=10, share=0.5, max_window_s=1.0) == 0.0
    # A flush of 10 viewers cost 1 ms: the next may start 2 ms after it began at share 0.5.
    pacer.record(started=100.0, cost_s=0.001, viewers=10)
    assert round(pacer.window(viewers=10, share=0.5, max_window_s=1.0), 9) == 0.002
    assert round(pacer.delay(100.0005, viewers=10, share=0.5, max_window_s=1.0), 9) == 0.0015
    assert pacer.delay(100.5, viewers=10, share=0.5, max_window_s=1.0) == 0.0


def test_a_busy_room_is_spaced_by_its_cost_over_its_share_and_capped() -> None:
    pacer = FlushPacer()
    pacer.record(started=0.0, cost_s=0.1, viewers=5000)  # 20 us a viewer
    assert round(pacer.window(viewers=5000, share=0.5, max_window_s=1.0), 6) == 0.2
    # Twice the viewers now, or half the share: twice the window.
    assert round(pacer.window(viewers=10_000, share=0.5, max_window_s=1.0), 6) == 0.4
    assert round(pacer.window(viewers=5000, share=0.25, max_window_s=1.0), 6) == 0.4
    assert pacer.window(viewers=5000, share=0.01, max_window_s=1.0) == 1.0


def test_the_cost_follows_recent_flushes_smoothly() -> None:
    pacer = FlushPacer(smoothing=0.5)
    pacer.record(started=0.0, cost_s=0.01, viewers=100)
    pacer.record(started=1.0, cost_s=0.03, viewers=100)
    assert round(pacer.cost_per_viewer_s, 9) == 0.0002
    pacer.record(started=2.0, cost_s=0.0, viewers=0)  # no one written: the cost stands
    assert round(pacer.cost_per_viewer_s, 9) == 0.0002 and pacer.last_start == 2.0


def test_the_loop_lag_keeps_the_worst_of_the_last_seconds() -> None:
    lag = LoopLag(window_s=3.0)
    lag.record(10.0, 0.002)
    lag.record(10.5, 0.050)
    lag.record(11.2, 0.001)
    assert lag.worst_s == lag.recent_worst_s == 0.050
    lag.record(13.9, 0.003)  # 10.x has left the 3-second window
    assert lag.recent_worst_s == 0.003 and lag.worst_s == 0.050
