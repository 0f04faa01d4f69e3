"""The fan-out's ordering and pacing rules as plain functions (`server.sequencing`): no
loop, no Redis, no sockets, no clock but the numbers passed in."""

from __future__ import annotations

import orjson

from server.loop_lag import LoopLag
from server.protocol import Outgoing
from server.sequencing import Batch, FlushPacer, RoomSequence, ViewerOrder, WriteCost


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


def cost(per_write_s: float, per_byte_s: float = 0.0) -> WriteCost:
    c = WriteCost()
    c.per_write_s, c.per_byte_s = per_write_s, per_byte_s
    return c


def test_a_quiet_room_flushes_at_once() -> None:
    pacer = FlushPacer()
    c = cost(0.0001)  # 100 us a write
    assert pacer.delay(100.0, viewers=10, share=0.5, cost=c, max_window_s=1.0) == 0.0
    pacer.record(started=100.0, frame_bytes=200)
    # Ten writes of 100 us at half a core: the next flush may start 2 ms after this one began.
    assert round(pacer.window(viewers=10, share=0.5, cost=c, max_window_s=1.0), 9) == 0.002
    assert round(pacer.delay(100.0005, viewers=10, share=0.5, cost=c, max_window_s=1.0), 9) == (
        0.0015
    )
    # After a quiet spell longer than that: at once.
    assert pacer.delay(100.5, viewers=10, share=0.5, cost=c, max_window_s=1.0) == 0.0


def test_a_busy_room_waits_just_long_enough_for_its_fan_out_to_fit_its_share() -> None:
    pacer = FlushPacer(smoothing=1.0)
    pacer.record(started=0.0, frame_bytes=0)
    pacer.record(started=0.2, frame_bytes=40_000)  # 200 KB a second to each viewer
    assert round(pacer.bytes_per_s) == 200_000
    c = cost(0.00001, 0.5e-9)  # 10 us a write, 0.5 ns a byte
    # 5,000 viewers: the payload takes half a core; at a share of 0.7 the writes' fixed
    # part may take the other 0.2: 5,000 x 10 us every 250 ms.
    window = pacer.window(viewers=5000, share=0.7, cost=c, max_window_s=1.0)
    assert round(window, 6) == 0.25
    # A share the payload alone fills: the fixed part is held to a quarter of it.
    assert round(pacer.window(viewers=5000, share=0.5, cost=c, max_window_s=1.0), 6) == 0.4
    assert pacer.window(viewers=5000, share=0.1, cost=c, max_window_s=1.0) == 1.0
    # The payload does not depend on the window: twice the share, a far shorter window.
    assert pacer.window(viewers=5000, share=1.0, cost=c, max_window_s=1.0) < window / 2


def test_write_costs_are_learned_from_small_and_big_frames() -> None:
    c = WriteCost(smoothing=1.0)
    c.record(writes=100, frame_bytes=300, cost_s=0.001)  # small: 10 us a write
    assert round(c.per_write_s, 9) == 0.00001 and c.per_byte_s == 0.0
    c.record(writes=100, frame_bytes=40_000, cost_s=0.003)  # 30 us: 20 us for 40 KB
    assert round(c.per_byte_s * 1e9, 3) == 0.5
    c.record(writes=100, frame_bytes=300, cost_s=0.00115)  # less the 300 bytes' part
    assert round(c.per_write_s, 9) == 0.00001135
    c.record(writes=0, frame_bytes=300, cost_s=1.0)  # nothing written: nothing learned
    assert round(c.per_write_s, 9) == 0.00001135


def test_the_loop_lag_keeps_the_worst_of_the_last_seconds() -> None:
    lag = LoopLag(window_s=3.0)
    lag.record(10.0, 0.002)
    lag.record(10.5, 0.050)
    lag.record(11.2, 0.001)
    assert lag.worst_s == lag.recent_worst_s == 0.050
    lag.record(13.9, 0.003)  # 10.x has left the 3-second window
    assert lag.recent_worst_s == 0.003 and lag.worst_s == 0.050
