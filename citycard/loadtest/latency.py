"""Latency accounting that a stall cannot hide (no coordinated omission).

A tap's latency is ``answered_ms - intended_ms``: from when the schedule *meant* to send it,
not from when the sender got round to it. A sender held up by a stalled server sends late,
and every tap it held up is charged the wait. Times are float ms after the run's start (the
caller's clock; tests use a fake one).

Every tap handed to ``LatencyRecorder.scheduled`` ends in exactly one bucket::

    answered (in the histogram) + timeouts + shed == taps

- answered: answered within ``timeout_ms`` of its intended time; recorded in an HdrHistogram.
- timeouts: answered later than that, or never answered by ``expire``/``finish``.
- shed: refused at ``scheduled`` because ``max_outstanding`` taps were already in flight (the
  caller must not send it).

Histograms hold integer microseconds from ``LOWEST_US`` (1 us) to ``HIGHEST_US`` (60 s) with
``SIGNIFICANT_DIGITS`` (3: values within 0.1 %). They ship between processes as HdrHistogram's
standard compressed base64 encoding inside JSON-able dicts (``to_wire`` / ``from_wire``) and
merge exactly (``LatencyTotals.merge``, ``merge_intervals``).

One concept, kept in one module on purpose (over 400 lines): the latency accounting, its
buckets and their invariant in one place.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000  # 60 s: above any sane tap timeout
SIGNIFICANT_DIGITS = 3
US_PER_MS = 1000.0
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

DEFAULT_INTERVAL_MS = 1000.0
DEFAULT_TIMEOUT_MS = 10_000.0
DEFAULT_MAX_OUTSTANDING = 1_000_000  # ~150 MB of dict entries at worst; the caller sheds above
DEFAULT_MAX_INTERVALS = 100_000  # undrained snapshots kept; drain with take_intervals()

WireDict = Mapping[str, object]


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def encode_histogram(histogram: HdrHistogram) -> str:
    return bytes(histogram.encode()).decode("ascii")


def decode_histogram(encoded: str) -> HdrHistogram:
    histogram: HdrHistogram = HdrHistogram.decode(encoded.encode("ascii"))
    return histogram


def _merged_histogram(encoded: Iterable[str]) -> HdrHistogram:
    total = new_histogram()
    for one in encoded:
        total.add(decode_histogram(one))
    return total


_EMPTY_B64 = encode_histogram(new_histogram())


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latency of answered taps, ms. All zero when nothing was answered."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, histogram: HdrHistogram) -> Percentiles:
        count = int(histogram.get_total_count())
        if count == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p90, p99, p999 = (int(histogram.get_value_at_percentile(p)) / US_PER_MS
                               for p in PERCENTILES)
        max_ms = int(histogram.get_max_value()) / US_PER_MS
        mean_ms = float(histogram.get_mean_value()) / US_PER_MS
        return cls(count, p50, p90, p99, p999, max_ms, mean_ms)


@dataclass(frozen=True, slots=True)
class LatencyTotals:
    """One process's (or a merged) account of a run: shippable and mergeable."""

    histogram_b64: str
    answered: int
    timeouts: int = 0
    shed: int = 0
    retries: int = 0  # re-sends of a tap already sent and in flight (same key, same seq)
    late_answers: int = 0  # answers after the tap was already counted a timeout
    unknown_answers: int = 0  # answers for keys never scheduled: a bug on the sending side
    max_send_lag_ms: float = 0.0  # worst (actual - intended) send time: the sender fell behind

    @property
    def taps(self) -> int:
        return self.answered + self.timeouts + self.shed

    def histogram(self) -> HdrHistogram:
        return decode_histogram(self.histogram_b64)

    def percentiles(self) -> Percentiles:
        return Percentiles.of(self.histogram())

    def to_wire(self) -> dict[str, object]:
        return {
            "histogram_b64": self.histogram_b64, "answered": self.answered,
            "timeouts": self.timeouts, "shed": self.shed, "retries": self.retries,
            "late_answers": self.late_answers, "unknown_answers": self.unknown_answers,
            "max_send_lag_ms": self.max_send_lag_ms,
        }

    @classmethod
    def from_wire(cls, wire: WireDict) -> LatencyTotals:
        return cls(
            histogram_b64=str(wire["histogram_b64"]), answered=_int(wire, "answered"),
            timeouts=_int(wire, "timeouts"), shed=_int(wire, "shed"),
            retries=_int(wire, "retries"), late_answers=_int(wire, "late_answers"),
            unknown_answers=_int(wire, "unknown_answers"),
            max_send_lag_ms=_float(wire, "max_send_lag_ms"),
        )

    @classmethod
    def merge(cls, parts: Iterable[LatencyTotals]) -> LatencyTotals:
        """The account of several sender processes as if one had sent every tap."""
        parts = list(parts)
        histogram = _merged_histogram(p.histogram_b64 for p in parts)
        return cls(
            histogram_b64=encode_histogram(histogram),
            answered=sum(p.answered for p in parts), timeouts=sum(p.timeouts for p in parts),
            shed=sum(p.shed for p in parts), retries=sum(p.retries for p in parts),
            late_answers=sum(p.late_answers for p in parts),
            unknown_answers=sum(p.unknown_answers for p in parts),
            max_send_lag_ms=max((p.max_send_lag_ms for p in parts), default=0.0),
        )


@dataclass(frozen=True, slots=True)
class IntervalSnapshot:
    """Answers (and timeouts declared) during ``[start_ms, end_ms)`` of the run, by the
    recorder's clock: one point of a latency-over-time plot. ``index`` is
    ``floor(start_ms / interval_ms)``, the same in every process sharing the run's start."""

    index: int
    start_ms: float
    end_ms: float
    answered: int
    timeouts: int
    histogram_b64: str

    def percentiles(self) -> Percentiles:
        return Percentiles.of(decode_histogram(self.histogram_b64))

    def to_wire(self) -> dict[str, object]:
        return {"index": self.index, "start_ms": self.start_ms, "end_ms": self.end_ms,
                "answered": self.answered, "timeouts": self.timeouts,
                "histogram_b64": self.histogram_b64}

    @classmethod
    def from_wire(cls, wire: WireDict) -> IntervalSnapshot:
        return cls(_int(wire, "index"), _float(wire, "start_ms"), _float(wire, "end_ms"),
                   _int(wire, "answered"), _int(wire, "timeouts"), str(wire["histogram_b64"]))


def merge_intervals(snapshots: Iterable[IntervalSnapshot]) -> list[IntervalSnapshot]:
    """Snapshots from several processes, merged per interval index, in time order."""
    by_index: dict[int, list[IntervalSnapshot]] = {}
    for snap in snapshots:
        by_index.setdefault(snap.index, []).append(snap)
    merged = []
    for index in sorted(by_index):
        group = by_index[index]
        histogram = _merged_histogram(s.histogram_b64 for s in group)
        merged.append(replace(group[0], answered=sum(s.answered for s in group),
                              timeouts=sum(s.timeouts for s in group),
                              histogram_b64=encode_histogram(histogram)))
    return merged


def record_many(histogram: HdrHistogram, values_us: Sequence[int]) -> None:
    """``histogram.record_value`` for many values at once (numpy; hdrh's own is ~1.5 us of
    Python a value). Same bucket arithmetic as hdrh; values must be in range."""
    n = len(values_us)
    if n == 0:
        return
    if n < _BULK_MIN:
        for v in values_us:
            if not histogram.record_value(v):
                raise AssertionError(f"latency {v} us outside the histogram's range")
        return
    v = np.asarray(values_us, dtype=np.int64)
    lo, hi = int(v.min()), int(v.max())
    if lo < 0 or hi > histogram.highest_trackable_value:
        raise AssertionError(f"latency {lo}..{hi} us outside the histogram's range")
    bit_length = np.frexp((v | histogram.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    bucket = bit_length - histogram.unit_magnitude - (histogram.sub_bucket_half_count_magnitude + 1)
    sub_bucket = v >> (bucket + histogram.unit_magnitude)
    index = ((bucket + 1) << histogram.sub_bucket_half_count_magnitude) + sub_bucket \
        - histogram.sub_bucket_half_count
    counts = np.ctypeslib.as_array(histogram.counts)
    np.add.at(counts, index, 1)
    histogram.total_count += n
    histogram.min_value = min(histogram.min_value, lo)
    histogram.max_value = max(histogram.max_value, hi)


_BULK_MIN = 16  # below this many values a Python loop is cheaper than numpy's set-up


class LatencyRecorder:
    """One sender process's latency account. Not thread-safe: one event loop owns it.

    ``scheduled`` each tap when its intended time comes, ``sent`` each send (a retry re-sends
    the same key and keeps its first intended time), ``answered`` each answer, ``expire`` now and then to turn overdue taps into timeouts,
    ``tick`` to close intervals while nothing is answered (a stall shows as empty intervals),
    ``finish`` at the end: whatever is still in flight is a timeout.
    """

    def __init__(self, *, interval_ms: float = DEFAULT_INTERVAL_MS,
                 timeout_ms: float = DEFAULT_TIMEOUT_MS,
                 max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
                 max_intervals: int = DEFAULT_MAX_INTERVALS) -> None:
        if not interval_ms > 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        if not 0 < timeout_ms * US_PER_MS <= HIGHEST_US:
            raise ValueError(f"timeout_ms must be in (0, {HIGHEST_US / US_PER_MS}]")
        if max_outstanding <= 0 or max_intervals <= 0:
            raise ValueError("max_outstanding and max_intervals must be > 0")
        self.interval_ms = interval_ms
        self.timeout_ms = timeout_ms
        self.max_outstanding = max_outstanding
        # Insertion order is first-send order, so overdue taps sit at the front (senders
        # send in schedule order); expire() stops at the first one not yet due.
        self._in_flight: dict[Hashable, float] = {}  # key -> intended send time, ms
        self._sent: set[Hashable] = set()  # keys in flight already sent once
        self._expired: set[Hashable] = set()  # to tell a late answer from an unknown one
        self._histogram = new_histogram()
        self._interval_histogram = new_histogram()
        self._interval_index = 0
        self._interval_answered = 0
        self._interval_timeouts = 0
        self._intervals: deque[IntervalSnapshot] = deque(maxlen=max_intervals)
        self.intervals_dropped = 0  # snapshots pushed out of the bounded queue, undrained
        self._timeouts = 0
        self._shed = 0
        self._retries = 0
        self._late_answers = 0
        self._unknown_answers = 0
        self._max_send_lag_ms = 0.0
        self._finished = False

    @property
    def outstanding(self) -> int:
        return len(self._in_flight)

    def scheduled(self, key: Hashable, intended_ms: float) -> bool:
        """Account tap ``key`` (e.g. ``(terminal_id, seq)``) the moment its intended send time
        comes, before it waits for a connection: a tap stuck behind a stalled sender is
        already in flight here and cannot vanish. False: shed, too many in flight; the tap is
        counted and must not be sent."""
        self._check_open()
        if key in self._in_flight:
            raise ValueError(f"tap {key!r} scheduled twice")
        if len(self._in_flight) >= self.max_outstanding:
            self._shed += 1
            return False
        self._in_flight[key] = intended_ms
        return True

    def sent(self, key: Hashable, sent_ms: float) -> None:
        """Account a send of a scheduled tap. The first send measures how far the sender fell
        behind; later ones are retries (same key, same seq): latency still runs from the
        intended time. Sends of taps already answered or expired are ignored."""
        self._check_open()
        intended_ms = self._in_flight.get(key)
        if intended_ms is None:
            return
        if key in self._sent:
            self._retries += 1
        else:
            self._sent.add(key)
            self._max_send_lag_ms = max(self._max_send_lag_ms, sent_ms - intended_ms)

    def sent_many(self, keys: Iterable[Hashable], sent_ms: float) -> None:
        """``sent`` for many taps sent together, in one call (the sender's hot path)."""
        self._check_open()
        in_flight, sent = self._in_flight, self._sent
        earliest_ms = math.inf
        for key in keys:
            intended_ms = in_flight.get(key)
            if intended_ms is None:
                continue
            if key in sent:
                self._retries += 1
                continue
            sent.add(key)
            if intended_ms < earliest_ms:
                earliest_ms = intended_ms
        if earliest_ms != math.inf:
            self._max_send_lag_ms = max(self._max_send_lag_ms, sent_ms - earliest_ms)

    def answered_many(self, keys: Iterable[Hashable], answered_ms: float) -> int:
        """``answered`` for many taps answered at the same moment; returns how many were
        recorded as samples."""
        self._check_open()
        self._advance(answered_ms)
        in_flight, sent, timeout_ms = self._in_flight, self._sent, self.timeout_ms
        latencies_us: list[int] = []
        for key in keys:
            intended_ms = in_flight.pop(key, None)
            if intended_ms is None:
                if key in self._expired:
                    self._expired.discard(key)
                    self._late_answers += 1
                else:
                    self._unknown_answers += 1
                continue
            sent.discard(key)
            latency_ms = answered_ms - intended_ms
            if latency_ms > timeout_ms:
                self._count_timeout()
                self._late_answers += 1
                continue
            latencies_us.append(round(latency_ms * US_PER_MS) if latency_ms > 0 else 0)
        record_many(self._interval_histogram, latencies_us)
        self._interval_answered += len(latencies_us)
        return len(latencies_us)

    def answered(self, key: Hashable, answered_ms: float) -> float | None:
        """Account the first answer for ``key``. Returns the latency recorded, in ms, or None
        when the answer is not a sample (late after a timeout, a duplicate, or unknown)."""
        self._check_open()
        self._advance(answered_ms)
        intended_ms = self._in_flight.pop(key, None)
        if intended_ms is None:
            if key in self._expired:
                self._expired.discard(key)
                self._late_answers += 1
            else:
                self._unknown_answers += 1
            return None
        # An answer before the intended time means the tap went out early: latency 0.
        self._sent.discard(key)
        latency_ms = max(answered_ms - intended_ms, 0.0)
        if latency_ms > self.timeout_ms:
            self._count_timeout()
            self._late_answers += 1
            return None
        latency_us = round(latency_ms * US_PER_MS)
        # Recorded once, in the open interval (hdrh's record is pure Python, ~1.5 us); the
        # interval is added into the run's histogram when it closes (a C array add).
        if not self._interval_histogram.record_value(latency_us):  # hdrh drops out-of-range silently
            raise AssertionError(f"latency {latency_us} us outside the histogram's range")
        self._interval_answered += 1
        return latency_ms

    def expire(self, now_ms: float) -> int:
        """Count taps in flight for more than ``timeout_ms`` after their intended time as
        timeouts. Returns how many."""
        self._check_open()
        self._advance(now_ms)
        due: list[Hashable] = []
        for key, intended_ms in self._in_flight.items():
            if now_ms - intended_ms <= self.timeout_ms:
                break
            due.append(key)
        for key in due:
            del self._in_flight[key]
            self._sent.discard(key)
            self._remember_expired(key)
            self._count_timeout()
        return len(due)

    def tick(self, now_ms: float) -> None:
        """Close the intervals that ended by ``now_ms``, empty or not."""
        self._check_open()
        self._advance(now_ms)

    def take_intervals(self) -> list[IntervalSnapshot]:
        """Closed interval snapshots not yet taken, oldest first."""
        taken = list(self._intervals)
        self._intervals.clear()
        return taken

    def totals(self) -> LatencyTotals:
        histogram = self._histogram
        if self._interval_answered:  # include the interval still open
            histogram = decode_histogram(encode_histogram(self._histogram))
            histogram.add(self._interval_histogram)
        return LatencyTotals(
            histogram_b64=encode_histogram(histogram),
            answered=int(histogram.get_total_count()), timeouts=self._timeouts,
            shed=self._shed, retries=self._retries, late_answers=self._late_answers,
            unknown_answers=self._unknown_answers, max_send_lag_ms=self._max_send_lag_ms,
        )

    def finish(self, end_ms: float) -> LatencyTotals:
        """End of run: every tap still in flight is a timeout; the last interval closes."""
        self._check_open()
        self._advance(end_ms)
        for _ in range(len(self._in_flight)):
            self._count_timeout()
        self._in_flight.clear()
        self._sent.clear()
        self._expired.clear()
        self._close_interval()
        self._finished = True
        return self.totals()

    def _count_timeout(self) -> None:
        self._timeouts += 1
        self._interval_timeouts += 1

    def _remember_expired(self, key: Hashable) -> None:
        # Bounded like the in-flight table: past it, a late answer counts as unknown.
        if len(self._expired) < self.max_outstanding:
            self._expired.add(key)

    def _advance(self, now_ms: float) -> None:
        # Events from before the open interval (clock jitter between tasks) land in it.
        target = math.floor(now_ms / self.interval_ms)
        keep = self._intervals.maxlen or 1
        if target - self._interval_index > keep:
            # A jump past what the queue holds (a long idle, a bad clock): skip, but count.
            self._close_interval()
            skipped = target - keep - self._interval_index
            self.intervals_dropped += max(skipped, 0)
            self._interval_index = max(self._interval_index, target - keep)
        while self._interval_index < target:
            self._close_interval()

    def _close_interval(self) -> None:
        if self._interval_answered:
            encoded = encode_histogram(self._interval_histogram)
            self._histogram.add(self._interval_histogram)
            self._interval_histogram.reset()
        else:
            encoded = _EMPTY_B64  # a stall's empty seconds cost no encoding
        if len(self._intervals) == self._intervals.maxlen:
            self.intervals_dropped += 1
        index = self._interval_index
        self._intervals.append(IntervalSnapshot(
            index, index * self.interval_ms, (index + 1) * self.interval_ms,
            self._interval_answered, self._interval_timeouts, encoded))
        self._interval_index += 1
        self._interval_answered = 0
        self._interval_timeouts = 0

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("recorder already finished")


def _int(wire: WireDict, name: str) -> int:
    value = wire[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return value


def _float(wire: WireDict, name: str) -> float:
    value = wire[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)
