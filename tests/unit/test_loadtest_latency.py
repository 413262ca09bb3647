"""Latency accounting without coordinated omission, on a fake clock: a stalled server shows
as high latency over every tap it held up, not as fewer samples."""

import json
import random

import pytest

from citycard.loadtest.latency import (
    HIGHEST_US,
    IntervalSnapshot,
    LatencyRecorder,
    LatencyTotals,
    decode_histogram,
    merge_intervals,
    new_histogram,
)

N_TAPS = 10_000  # one tap every 1 ms for 10 s
STALL_FROM_MS, STALL_UNTIL_MS = 4_000.0, 6_000.0
SERVICE_MS = 0.05
WINDOW = 4  # taps a sender keeps outstanding, as a real connection's window does


def _simulate(n_taps: int, end_ms: float | None = None):
    """A sender with a bounded window in front of a one-at-a-time server that answers nothing
    during [STALL_FROM_MS, STALL_UNTIL_MS). Taps are due every 1 ms; the sender sends a tap
    when it is due AND a window slot is free, so during the stall it sends late (as any real
    client does). Returns (intended, sent, answered) times per tap, ms; an answer after
    ``end_ms`` is None."""
    intended = [float(i) for i in range(n_taps)]
    sent: list[float] = []
    answered: list[float] = []
    server_free_ms = 0.0
    for i, due_ms in enumerate(intended):
        sent_ms = max(due_ms, answered[i - WINDOW]) if i >= WINDOW else due_ms
        start_ms = max(sent_ms, server_free_ms)
        if STALL_FROM_MS <= start_ms < STALL_UNTIL_MS:
            start_ms = STALL_UNTIL_MS
        server_free_ms = start_ms + SERVICE_MS
        sent.append(sent_ms)
        answered.append(server_free_ms)
    if end_ms is not None:
        answered = [a if a <= end_ms else None for a in answered]  # type: ignore[misc]
    return intended, sent, answered


def _feed(recorder: LatencyRecorder, intended, sent, answered, end_ms: float):
    """Replay the simulation into the recorder in time order (the fake clock)."""
    events = []
    for i, (due_ms, sent_ms, answer_ms) in enumerate(zip(intended, sent, answered, strict=True)):
        events.append((due_ms, 0, i))
        if sent_ms <= end_ms:
            events.append((sent_ms, 1, i))
        if answer_ms is not None:
            events.append((answer_ms, 2, i))
    for now_ms, kind, i in sorted(events):
        if now_ms > end_ms:
            break
        if kind == 0:
            assert recorder.scheduled(("T1", i), intended[i])
        elif kind == 1:
            recorder.sent(("T1", i), now_ms)
        else:
            recorder.answered(("T1", i), now_ms)
    return recorder.finish(end_ms)


def _percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_a_stall_shows_as_high_p99_over_every_arrival():
    intended, sent, answered = _simulate(N_TAPS)
    # The trap: measured from the actual send, the stall nearly vanishes, because the
    # sender stopped sending while it lasted. This is the number a closed loop would report.
    from_send_ms = [a - s for a, s in zip(answered, sent, strict=True)]
    assert _percentile(from_send_ms, 0.99) < 5.0
    assert sum(ms > 100 for ms in from_send_ms) <= WINDOW

    recorder = LatencyRecorder(interval_ms=1_000.0, timeout_ms=30_000.0)
    totals = _feed(recorder, intended, sent, answered, end_ms=20_000.0)
    pct = totals.percentiles()
    assert totals.answered == pct.count == N_TAPS  # one sample per arrival, none lost
    assert totals.timeouts == totals.shed == 0
    # Taps due during the stall waited up to 2 s: a fifth of all taps, far above p99.
    assert pct.p99_ms > 1_500.0
    assert pct.p90_ms > 300.0
    assert pct.max_ms == pytest.approx(2_000.0, rel=0.01)
    assert pct.p50_ms < 1.0
    assert totals.max_send_lag_ms == pytest.approx(2_000.0, rel=0.01)  # the sender fell behind


def test_a_stall_shows_in_the_interval_snapshots():
    intended, sent, answered = _simulate(N_TAPS)
    recorder = LatencyRecorder(interval_ms=1_000.0)
    _feed(recorder, intended, sent, answered, end_ms=12_000.0)
    intervals = recorder.take_intervals()
    assert [s.index for s in intervals] == list(range(13))
    assert [s.start_ms for s in intervals[:3]] == [0.0, 1_000.0, 2_000.0]
    assert intervals[4].answered == intervals[5].answered == 0  # the stall: no answers...
    assert intervals[6].percentiles().max_ms == pytest.approx(2_000.0, rel=0.01)  # ...then this
    assert intervals[2].percentiles().p99_ms < 1.0
    assert sum(s.answered for s in intervals) == N_TAPS
    assert recorder.take_intervals() == []


def test_a_run_ending_in_a_stall_counts_what_was_not_answered():
    # The stall never ends inside the run: taps due from 4 s to the end never get an answer.
    # Each is a timeout, and answered + timeouts is still every arrival.
    end_ms = 5_999.0
    n_due = 6_000
    intended, sent, answered = _simulate(n_due, end_ms=end_ms)
    recorder = LatencyRecorder(timeout_ms=10_000.0)
    totals = _feed(recorder, intended, sent, answered, end_ms=end_ms)
    assert totals.answered + totals.timeouts + totals.shed == totals.taps == n_due
    assert totals.timeouts >= 2_000 - 1
    assert totals.percentiles().count == totals.answered


def test_latency_runs_from_the_intended_time_not_the_send():
    recorder = LatencyRecorder()
    assert recorder.scheduled("a", 100.0)
    recorder.sent("a", 900.0)  # the sender got to it late
    assert recorder.answered("a", 1_000.0) == pytest.approx(900.0)
    pct = recorder.finish(1_000.0).percentiles()
    assert pct.max_ms == pytest.approx(900.0, rel=1e-3)


def test_a_retry_keeps_its_intended_time():
    recorder = LatencyRecorder()
    recorder.scheduled(("T9", 41), 0.0)
    recorder.sent(("T9", 41), 0.0)
    recorder.sent(("T9", 41), 500.0)  # no answer: resent with the same seq
    assert recorder.answered(("T9", 41), 600.0) == pytest.approx(600.0)
    totals = recorder.finish(600.0)
    assert (totals.answered, totals.retries, totals.max_send_lag_ms) == (1, 1, 0.0)


def test_unanswered_taps_are_timeouts_never_dropped():
    recorder = LatencyRecorder(timeout_ms=1_000.0)
    for i in range(100):
        recorder.scheduled(i, float(i))
        recorder.sent(i, float(i))
    for i in range(0, 100, 5):
        recorder.answered(i, i + 2.0)
    assert recorder.outstanding == 80
    totals = recorder.finish(200.0)
    assert (totals.answered, totals.timeouts, totals.taps) == (20, 80, 100)
    assert recorder.outstanding == 0


def test_expire_and_late_answers():
    recorder = LatencyRecorder(timeout_ms=1_000.0)
    for i in range(10):
        recorder.scheduled(i, i * 100.0)
    assert recorder.expire(1_000.0) == 0  # not yet overdue: strictly more than the timeout
    assert recorder.expire(1_250.0) == 3  # due at 0, 100, 200
    assert recorder.answered(0, 1_300.0) is None  # too late: already a timeout
    assert recorder.answered(5, 1_600.0) is None  # 1.1 s: a timeout, even without expire
    assert recorder.answered(9, 1_000.0) == pytest.approx(100.0)
    assert recorder.answered("never", 1_000.0) is None
    totals = recorder.finish(2_000.0)
    assert totals.answered == 1
    assert totals.timeouts == 9 and totals.taps == 10
    assert (totals.late_answers, totals.unknown_answers) == (2, 1)


def test_shed_when_too_many_in_flight():
    recorder = LatencyRecorder(max_outstanding=2)
    assert recorder.scheduled(1, 0.0) and recorder.scheduled(2, 0.0)
    assert not recorder.scheduled(3, 0.0)
    recorder.answered(1, 5.0)
    assert recorder.scheduled(4, 1.0)
    totals = recorder.finish(10.0)
    assert (totals.answered, totals.timeouts, totals.shed, totals.taps) == (1, 2, 1, 4)


def test_percentiles_within_the_documented_precision():
    recorder = LatencyRecorder()
    for i in range(1, 1_001):  # 1 ms .. 1000 ms, one each
        recorder.scheduled(i, 0.0)
        recorder.answered(i, float(i))
    pct = recorder.finish(1_000.0).percentiles()
    assert pct.count == 1_000
    # 3 significant digits: within 0.1 % of the exact order statistic.
    for got, exact in ((pct.p50_ms, 500), (pct.p90_ms, 900), (pct.p99_ms, 990),
                       (pct.p999_ms, 999), (pct.max_ms, 1_000)):
        assert got == pytest.approx(exact, rel=1e-3)
    assert pct.mean_ms == pytest.approx(500.5, rel=1e-3)


def test_nothing_answered_gives_zero_percentiles():
    recorder = LatencyRecorder()
    recorder.scheduled(1, 0.0)
    totals = recorder.finish(10.0)
    assert totals.percentiles().count == 0 and totals.percentiles().p99_ms == 0.0
    assert totals.timeouts == 1


def _fill(recorder: LatencyRecorder, samples):
    """Schedule and answer in time order, as one process's clock would see them."""
    events = [(intended_ms, 0, key) for key, (intended_ms, _) in samples]
    events += [(intended_ms + latency_ms, 1, key) for key, (intended_ms, latency_ms) in samples]
    for now_ms, kind, key in sorted(events):
        if kind == 0:
            recorder.scheduled(key, now_ms)
        else:
            recorder.answered(key, now_ms)


def test_merge_of_two_processes_equals_one_histogram_of_all():
    rng = random.Random(7)
    samples = [(i, (i * 0.5, rng.lognormvariate(1.0, 1.5))) for i in range(20_000)]
    samples = [s for s in samples if s[1][1] < 10_000]  # under the timeout
    one, left, right = (LatencyRecorder(interval_ms=500.0) for _ in range(3))
    _fill(one, samples)
    _fill(left, [s for s in samples if s[0] % 3 == 0])
    _fill(right, [s for s in samples if s[0] % 3 != 0])
    left.scheduled("lost", 0.0)  # and one timeout in one process

    # Shipped between processes as JSON.
    shipped = [json.loads(json.dumps(r.finish(20_000.0).to_wire())) for r in (left, right)]
    merged = LatencyTotals.merge(LatencyTotals.from_wire(w) for w in shipped)
    whole = one.finish(20_000.0)
    assert merged.histogram().equals(whole.histogram())
    assert merged.percentiles() == whole.percentiles()
    assert merged.answered == whole.answered == len(samples)
    assert merged.timeouts == 1

    ship = [[json.loads(json.dumps(s.to_wire())) for s in r.take_intervals()] for r in (left, right)]
    merged_intervals = merge_intervals(IntervalSnapshot.from_wire(w) for part in ship for w in part)
    whole_intervals = one.take_intervals()
    assert [s.index for s in merged_intervals] == [s.index for s in whole_intervals]
    for got, want in zip(merged_intervals, whole_intervals, strict=True):
        assert got.answered == want.answered
        assert decode_histogram(got.histogram_b64).equals(decode_histogram(want.histogram_b64))
    assert sum(s.timeouts for s in merged_intervals) == 1


def test_interval_queue_is_bounded_and_counts_what_it_drops():
    recorder = LatencyRecorder(interval_ms=10.0, max_intervals=5)
    recorder.tick(95.0)  # nine intervals closed, five kept
    assert recorder.intervals_dropped == 4
    assert [s.index for s in recorder.take_intervals()] == [4, 5, 6, 7, 8]
    recorder.tick(1e9)  # a clock jump costs no loop over a hundred million intervals
    kept = recorder.take_intervals()
    assert len(kept) == 5 and kept[-1].index == 1e8 - 1
    # Every interval closed is taken, kept or counted as dropped.
    assert 5 + len(kept) + recorder.intervals_dropped == 10**8


def test_bad_use_is_refused():
    with pytest.raises(ValueError):
        LatencyRecorder(timeout_ms=HIGHEST_US / 1000 + 1)
    with pytest.raises(ValueError):
        LatencyRecorder(interval_ms=0)
    recorder = LatencyRecorder()
    recorder.scheduled("a", 0.0)
    with pytest.raises(ValueError, match="twice"):
        recorder.scheduled("a", 1.0)
    recorder.finish(1.0)
    with pytest.raises(RuntimeError):
        recorder.scheduled("b", 2.0)
    with pytest.raises(ValueError):
        LatencyTotals.from_wire({**recorder.totals().to_wire(), "answered": "3"})


def test_histogram_range_is_as_documented():
    histogram = new_histogram()
    assert histogram.record_value(1)
    assert histogram.record_value(HIGHEST_US)
    assert not histogram.record_value(HIGHEST_US * 2)  # hdrh drops these: timeouts cap first


def test_record_many_fills_the_same_buckets_as_record_value():
    import random as random_mod

    from citycard.loadtest.latency import HIGHEST_US, encode_histogram, new_histogram, record_many

    rng = random_mod.Random(5)
    values = [rng.choice((0, 1, 7, 1023, 1024, 2047, 2048, HIGHEST_US)) for _ in range(50)]
    values += [int(rng.lognormvariate(8, 3)) % HIGHEST_US for _ in range(5000)]
    one_by_one, bulk = new_histogram(), new_histogram()
    for v in values:
        one_by_one.record_value(v)
    record_many(bulk, values[:10])  # small: the loop
    record_many(bulk, values[10:])  # large: numpy
    assert encode_histogram(bulk) == encode_histogram(one_by_one)
    assert bulk.get_total_count() == len(values)
    assert (bulk.get_min_value(), bulk.get_max_value()) == (one_by_one.get_min_value(), one_by_one.get_max_value())
    with pytest.raises(AssertionError):
        record_many(bulk, [HIGHEST_US * 4] * 20)


def test_batch_calls_account_like_one_at_a_time():
    one, many = LatencyRecorder(timeout_ms=100.0), LatencyRecorder(timeout_ms=100.0)
    keys = list(range(40))
    for r in (one, many):
        for k in keys:
            r.scheduled(k, float(k))
    for k in keys:
        one.sent(k, 50.0)
    one.sent(3, 60.0)  # a retry
    many.sent_many(keys, 50.0)
    many.sent_many([3], 60.0)
    for k in keys[:30]:
        one.answered(k, 120.0)  # keys 0..19 are late (> 100 ms after their intended time)
    many.answered_many(keys[:30], 120.0)
    for r in (one, many):
        r.answered(999, 121.0)  # unknown
    a, b = one.finish(200.0), many.finish(200.0)
    assert a.to_wire() == b.to_wire()
    assert (b.answered, b.timeouts, b.retries, b.unknown_answers) == (10, 30, 1, 1)
