"""Open-loop arrival schedule: when each tap is *meant* to be sent, and by which terminal.

Pure: no clock, no I/O. Randomness comes in as a seeded ``random.Random``; times are float
milliseconds after the run's start (a shared origin for all sender processes).

Arrivals form a non-homogeneous Poisson process with rate ``profile.rate_per_s(t_ms)``,
drawn by thinning (Lewis and Shedler) against a per-block majorant, so a 10x spike does not
make the whole run draw 10x the candidates. The stream is bounded by a count AND a duration.

Each arrival goes to one virtual terminal; sender processes split the stream by terminal
(``terminal % n_senders``) so that one terminal's seq numbers stay in one process and one
connection. Every process regenerates the same stream from the same seed and keeps its share:
a partition, with no coordination.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, islice
from typing import Protocol

MS_PER_S = 1000.0
HOURS_PER_DAY = 24.0
DAY_MS = 86_400_000.0
# Thinning block: the majorant is recomputed per block; 1 s keeps rejection low on spikes
# and ramps while costing one bound call per second of schedule.
DEFAULT_BLOCK_MS = 1000.0
# Relative slack before a profile's rate above its own bound counts as a bug (float noise).
_BOUND_SLACK = 1e-9


class RateProfile(Protocol):
    """Offered rate as a function of time since start. ``max_rate_per_s`` must bound
    ``rate_per_s`` from above on ``[start_ms, end_ms)``; thinning checks it."""

    def rate_per_s(self, t_ms: float) -> float: ...

    def max_rate_per_s(self, start_ms: float, end_ms: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Steady:
    """A constant rate of ``target_per_s`` arrivals per second."""

    target_per_s: float

    def __post_init__(self) -> None:
        _check_rate(self.target_per_s)

    def rate_per_s(self, t_ms: float) -> float:
        return self.target_per_s

    def max_rate_per_s(self, start_ms: float, end_ms: float) -> float:
        return self.target_per_s


@dataclass(frozen=True, slots=True)
class Ramp:
    """Rush hour: rate rises (or falls) linearly from ``from_rate_per_s`` at 0 to
    ``to_rate_per_s`` at ``ramp_ms``, then holds ``to_rate_per_s``."""

    from_rate_per_s: float
    to_rate_per_s: float
    ramp_ms: float

    def __post_init__(self) -> None:
        _check_rate(self.from_rate_per_s)
        _check_rate(self.to_rate_per_s)
        if not self.ramp_ms > 0:
            raise ValueError(f"ramp_ms must be > 0, got {self.ramp_ms}")

    def rate_per_s(self, t_ms: float) -> float:
        share = min(max(t_ms / self.ramp_ms, 0.0), 1.0)
        return self.from_rate_per_s + (self.to_rate_per_s - self.from_rate_per_s) * share

    def max_rate_per_s(self, start_ms: float, end_ms: float) -> float:
        # Linear then flat: the maximum is at one of the window's ends.
        return max(self.rate_per_s(start_ms), self.rate_per_s(end_ms))


@dataclass(frozen=True, slots=True)
class Spike:
    """``base_rate_per_s``, multiplied by ``multiplier`` on ``[start_ms, start_ms + duration_ms)``."""

    base_rate_per_s: float
    multiplier: float
    start_ms: float
    duration_ms: float

    def __post_init__(self) -> None:
        _check_rate(self.base_rate_per_s)
        if not self.multiplier >= 0 or not self.duration_ms >= 0:
            raise ValueError("multiplier and duration_ms must be >= 0")

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms

    def rate_per_s(self, t_ms: float) -> float:
        if self.start_ms <= t_ms < self.end_ms:
            return self.base_rate_per_s * self.multiplier
        return self.base_rate_per_s

    def max_rate_per_s(self, start_ms: float, end_ms: float) -> float:
        overlaps = start_ms < self.end_ms and self.start_ms < end_ms
        if overlaps:
            return max(self.base_rate_per_s, self.base_rate_per_s * self.multiplier)
        return self.base_rate_per_s


@dataclass(frozen=True, slots=True)
class DayCurve:
    """A city's day, replayed in ``day_ms`` (86_400_000 for real time; 600_000 plays a day in
    10 minutes). At hour ``h`` of the day (``h = 24 * (t_ms mod day_ms) / day_ms``)::

        rate(h) = base_rate_per_s
                + morning_extra_per_s * exp(-d(h, morning_hour)**2 / (2 * morning_width_h**2))
                + evening_extra_per_s * exp(-d(h, evening_hour)**2 / (2 * evening_width_h**2))

    where ``d`` is the distance in hours around the clock (so the curve is periodic and
    a soak can replay several days). Defaults: peaks at 08:00 (sigma 1.5 h) and 18:00
    (sigma 2 h), the evening a little flatter, as in transit ridership curves. Rates are per
    second of *replay*: compressing the day raises them; ``for_total_taps`` scales them so a
    whole day holds a given number of taps.
    """

    base_rate_per_s: float
    morning_extra_per_s: float
    evening_extra_per_s: float
    day_ms: float = DAY_MS
    morning_hour: float = 8.0
    morning_width_h: float = 1.5
    evening_hour: float = 18.0
    evening_width_h: float = 2.0

    def __post_init__(self) -> None:
        for rate in (self.base_rate_per_s, self.morning_extra_per_s, self.evening_extra_per_s):
            _check_rate(rate)
        if not self.day_ms > 0 or not self.morning_width_h > 0 or not self.evening_width_h > 0:
            raise ValueError("day_ms and peak widths must be > 0")

    @classmethod
    def for_total_taps(cls, total_taps: float, day_ms: float, *, base_share: float = 0.35,
                       morning_share: float = 1.0, evening_share: float = 0.8) -> DayCurve:
        """A curve of this shape (rates in the ratio base:morning:evening) whose integral over
        one day is ``total_taps``: "20 M taps a day, replayed in 10 minutes"."""
        unit = cls(base_share, morning_share, evening_share, day_ms)
        unit_taps = expected_count(unit, 0.0, day_ms)
        scale = total_taps / unit_taps
        return cls(base_share * scale, morning_share * scale, evening_share * scale, day_ms)

    def hour_of(self, t_ms: float) -> float:
        return HOURS_PER_DAY * ((t_ms % self.day_ms) / self.day_ms)

    def rate_per_s(self, t_ms: float) -> float:
        hour = self.hour_of(t_ms)
        return (self.base_rate_per_s
                + self.morning_extra_per_s * _bump(hour, self.morning_hour, self.morning_width_h)
                + self.evening_extra_per_s * _bump(hour, self.evening_hour, self.evening_width_h))

    def max_rate_per_s(self, start_ms: float, end_ms: float) -> float:
        # Each bump peaks at its centre or else at the window end nearest to it; the sum of
        # the two maxima bounds the maximum of the sum.
        if end_ms - start_ms >= self.day_ms:
            return self.base_rate_per_s + self.morning_extra_per_s + self.evening_extra_per_s
        return (self.base_rate_per_s
                + self.morning_extra_per_s * self._bump_max(start_ms, end_ms, self.morning_hour,
                                                            self.morning_width_h)
                + self.evening_extra_per_s * self._bump_max(start_ms, end_ms, self.evening_hour,
                                                            self.evening_width_h))

    def _bump_max(self, start_ms: float, end_ms: float, centre_h: float, width_h: float) -> float:
        start_h = self.hour_of(start_ms)
        span_h = HOURS_PER_DAY * (end_ms - start_ms) / self.day_ms
        ahead_h = (centre_h - start_h) % HOURS_PER_DAY  # hours until the centre comes round
        if ahead_h <= span_h:
            return 1.0
        return max(_bump(start_h, centre_h, width_h), _bump(start_h + span_h, centre_h, width_h))


@dataclass(frozen=True, slots=True)
class Scaled:
    """``profile`` times ``share``: one sender's part of the city's rate. Independent Poisson
    streams add up to a Poisson stream of the summed rate, so senders need no coordination."""

    profile: RateProfile
    share: float

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1:
            raise ValueError(f"share must be in [0, 1], got {self.share}")

    def rate_per_s(self, t_ms: float) -> float:
        return self.profile.rate_per_s(t_ms) * self.share

    def max_rate_per_s(self, start_ms: float, end_ms: float) -> float:
        return self.profile.max_rate_per_s(start_ms, end_ms) * self.share


def _bump(hour: float, centre_h: float, width_h: float) -> float:
    gap_h = abs(hour - centre_h) % HOURS_PER_DAY
    gap_h = min(gap_h, HOURS_PER_DAY - gap_h)
    return math.exp(-(gap_h * gap_h) / (2.0 * width_h * width_h))


def _check_rate(rate_per_s: float) -> None:
    if not (rate_per_s >= 0 and math.isfinite(rate_per_s)):
        raise ValueError(f"rate must be finite and >= 0, got {rate_per_s}")


def expected_count(profile: RateProfile, start_ms: float, end_ms: float,
                   step_ms: float = 100.0) -> float:
    """Expected number of arrivals on ``[start_ms, end_ms)``: the rate integrated by the
    midpoint rule (for reports and tests; the schedule itself is exact)."""
    if end_ms <= start_ms:
        return 0.0
    n_steps = max(1, math.ceil((end_ms - start_ms) / step_ms))
    width_ms = (end_ms - start_ms) / n_steps
    total_per_s = sum(profile.rate_per_s(start_ms + (i + 0.5) * width_ms) for i in range(n_steps))
    return total_per_s * width_ms / MS_PER_S


def arrival_times_ms(profile: RateProfile, rng: random.Random, *, max_count: int,
                     max_duration_ms: float, block_ms: float = DEFAULT_BLOCK_MS) -> Iterator[float]:
    """Intended send times, ascending, in ``[0, max_duration_ms)``, at most ``max_count``.

    Thinning per block ``[b, b + block_ms)``: candidates from a homogeneous Poisson process at
    the block's bound, each kept with probability ``rate(t) / bound``. At a block's end the
    candidate clock restarts at the boundary, which is exact because exponential gaps are
    memoryless.
    """
    if max_count < 0 or not max_duration_ms >= 0 or not block_ms > 0:
        raise ValueError("max_count and max_duration_ms must be >= 0, block_ms > 0")
    count = 0
    block_start_ms = 0.0
    while count < max_count and block_start_ms < max_duration_ms:
        block_end_ms = min(block_start_ms + block_ms, max_duration_ms)
        bound_per_s = profile.max_rate_per_s(block_start_ms, block_end_ms)
        if bound_per_s > 0:
            bound_per_ms = bound_per_s / MS_PER_S
            t_ms = block_start_ms
            while True:
                t_ms += rng.expovariate(bound_per_ms)
                if t_ms >= block_end_ms:
                    break
                rate_per_s = profile.rate_per_s(t_ms)
                if rate_per_s > bound_per_s * (1.0 + _BOUND_SLACK):
                    raise ValueError(f"profile rate {rate_per_s}/s at {t_ms} ms exceeds its "
                                     f"bound {bound_per_s}/s: fix max_rate_per_s")
                if rng.random() * bound_per_s < rate_per_s:
                    yield t_ms
                    count += 1
                    if count >= max_count:
                        return
        block_start_ms = block_end_ms


@dataclass(frozen=True, slots=True)
class Arrival:
    index: int  # position in the whole stream (all senders): a run-wide tap id
    send_at_ms: float  # intended send time after the run's start
    terminal: int  # virtual terminal, in [0, n_terminals)


class TerminalPicker:
    """Picks a virtual terminal for each arrival: uniform, or by relative weights (busy
    validators on trunk routes, quiet library desks)."""

    def __init__(self, n_terminals: int, weights: Sequence[float] | None = None) -> None:
        if n_terminals <= 0:
            raise ValueError(f"n_terminals must be > 0, got {n_terminals}")
        self.n_terminals = n_terminals
        self._cum_weights: list[float] | None = None
        if weights is not None:
            if len(weights) != n_terminals or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError("need one weight >= 0 per terminal, and a positive sum")
            self._cum_weights = list(accumulate(weights))

    @property
    def cum_weights(self) -> list[float] | None:
        return self._cum_weights

    def pick(self, rng: random.Random) -> int:
        if self._cum_weights is None:
            return min(int(rng.random() * self.n_terminals), self.n_terminals - 1)
        point = rng.random() * self._cum_weights[-1]
        return min(bisect.bisect_right(self._cum_weights, point), self.n_terminals - 1)


def arrivals(profile: RateProfile, rng: random.Random, picker: TerminalPicker, *, max_count: int,
             max_duration_ms: float, block_ms: float = DEFAULT_BLOCK_MS) -> Iterator[Arrival]:
    """The whole run's arrivals, each with its terminal. Times and terminals draw from two
    child generators seeded from ``rng``, so the times do not depend on the terminal count."""
    times_rng = random.Random(rng.getrandbits(64))
    terminals_rng = random.Random(rng.getrandbits(64))
    times = arrival_times_ms(profile, times_rng, max_count=max_count,
                             max_duration_ms=max_duration_ms, block_ms=block_ms)
    for index, send_at_ms in enumerate(times):
        yield Arrival(index, send_at_ms, picker.pick(terminals_rng))


def arrival_chunks(profile: RateProfile, rng: random.Random, picker: TerminalPicker, *, max_count: int,
                   max_duration_ms: float, chunk: int = 512) -> Iterator[tuple[list[float], list[int]]]:
    """The stream of ``arrivals`` (same times, same terminals for the same ``rng``) as lists
    of up to ``chunk`` send times and their terminals: no object per arrival, terminals drawn
    in bulk (a sender's hot path)."""
    times_rng = random.Random(rng.getrandbits(64))
    terminals_rng = random.Random(rng.getrandbits(64))
    times = arrival_times_ms(profile, times_rng, max_count=max_count, max_duration_ms=max_duration_ms)
    population = range(picker.n_terminals)
    cum_weights = picker.cum_weights
    while True:
        batch = list(islice(times, chunk))
        if not batch:
            return
        if cum_weights is None:
            n = picker.n_terminals
            rnd = terminals_rng.random
            terminals = [min(int(rnd() * n), n - 1) for _ in batch]
        else:
            terminals = terminals_rng.choices(population, cum_weights=cum_weights, k=len(batch))
        yield batch, terminals


def sender_of(terminal: int, n_senders: int) -> int:
    """The sender process that owns a terminal (and so all of that terminal's seqs)."""
    if n_senders <= 0:
        raise ValueError(f"n_senders must be > 0, got {n_senders}")
    return terminal % n_senders


def for_sender(stream: Iterable[Arrival], sender: int, n_senders: int) -> Iterator[Arrival]:
    """This sender's share of the stream: the arrivals of the terminals it owns."""
    if not 0 <= sender < n_senders:
        raise ValueError(f"sender must be in [0, {n_senders}), got {sender}")
    return (a for a in stream if sender_of(a.terminal, n_senders) == sender)
