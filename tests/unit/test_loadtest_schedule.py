"""The open-loop arrival schedule: rate, shape, bounds, determinism and the split among
sender processes. Pure and seeded: no clock, no sleeping."""

import math
import random
import statistics
from collections import Counter

import pytest

from citycard.loadtest.schedule import (
    DayCurve,
    Ramp,
    Spike,
    Steady,
    TerminalPicker,
    arrival_times_ms,
    arrivals,
    expected_count,
    for_sender,
    sender_of,
)

SEED = 20240515
# Poisson counts: sd = sqrt(mean). 5 sd keeps a fixed-seed test from being a coin toss while
# still catching a rate off by a few percent at these sizes.
SIGMAS = 5.0


def _times(profile, *, max_count=10**9, max_duration_ms, seed=SEED):
    return list(arrival_times_ms(profile, random.Random(seed), max_count=max_count,
                                 max_duration_ms=max_duration_ms))


def _assert_poisson_count(observed: int, expected: float) -> None:
    assert abs(observed - expected) <= SIGMAS * math.sqrt(expected), (observed, expected)


def _count_between(times, start_ms, end_ms) -> int:
    return sum(1 for t in times if start_ms <= t < end_ms)


def test_steady_rate_and_count_match_target():
    times = _times(Steady(1000.0), max_duration_ms=60_000)
    _assert_poisson_count(len(times), 60_000)
    for start_ms in range(0, 60_000, 10_000):  # no drift across the run
        _assert_poisson_count(_count_between(times, start_ms, start_ms + 10_000), 10_000)


def test_steady_gaps_are_exponential():
    times = _times(Steady(1000.0), max_duration_ms=60_000)
    gaps_ms = [b - a for a, b in zip(times, times[1:], strict=False)]
    mean_ms = statistics.fmean(gaps_ms)
    assert mean_ms == pytest.approx(1.0, rel=0.02)
    # Exponential: sd equals mean (coefficient of variation 1); a fixed-gap or jittered
    # schedule would be far below.
    assert statistics.stdev(gaps_ms) / mean_ms == pytest.approx(1.0, abs=0.03)
    # Memoryless: P(gap > mean) = 1/e.
    assert sum(g > 1.0 for g in gaps_ms) / len(gaps_ms) == pytest.approx(math.exp(-1), abs=0.01)


def test_times_ascend_and_stay_inside_the_duration():
    times = _times(Spike(500.0, 4.0, 2_000, 1_000), max_duration_ms=5_500)
    assert times == sorted(times)
    assert all(0 <= t < 5_500 for t in times)
    assert times[-1] > 5_000  # and reach the end


def test_count_bound_stops_the_stream_first():
    times = _times(Steady(1000.0), max_count=1234, max_duration_ms=60_000)
    assert len(times) == 1234
    assert times[-1] < 60_000
    assert _times(Steady(1000.0), max_count=0, max_duration_ms=60_000) == []
    assert _times(Steady(1000.0), max_duration_ms=0) == []
    assert _times(Steady(0.0), max_duration_ms=60_000) == []


def test_duration_bound_stops_the_stream_first():
    times = _times(Steady(1000.0), max_count=1_000_000, max_duration_ms=3_000)
    assert all(t < 3_000 for t in times)
    _assert_poisson_count(len(times), 3_000)


def test_stream_is_lazy():
    stream = arrival_times_ms(Steady(1e6), random.Random(SEED), max_count=10**12,
                              max_duration_ms=1e12)
    first = [next(stream) for _ in range(5)]
    assert first == sorted(first)


def test_deterministic_for_a_seed():
    profile = DayCurve.for_total_taps(20_000, 60_000)
    assert _times(profile, max_duration_ms=60_000) == _times(profile, max_duration_ms=60_000)
    assert _times(profile, max_duration_ms=60_000) != _times(profile, max_duration_ms=60_000,
                                                             seed=SEED + 1)

    def stream(n_terminals):
        return list(arrivals(profile, random.Random(SEED), TerminalPicker(n_terminals),
                             max_count=5_000, max_duration_ms=60_000))

    assert stream(50) == stream(50)
    # The terminal count changes who sends, not when.
    assert [a.send_at_ms for a in stream(50)] == [a.send_at_ms for a in stream(7)]


def test_ramp_rises_as_documented():
    ramp = Ramp(100.0, 2_100.0, 20_000)
    assert ramp.rate_per_s(0) == 100.0
    assert ramp.rate_per_s(10_000) == pytest.approx(1_100.0)
    assert ramp.rate_per_s(20_000) == ramp.rate_per_s(90_000) == 2_100.0  # holds at the top
    times = _times(ramp, max_duration_ms=30_000)
    _assert_poisson_count(len(times), expected_count(ramp, 0, 30_000))
    per_window = [_count_between(times, s, s + 4_000) for s in range(0, 20_000, 4_000)]
    assert per_window == sorted(per_window)  # each rush-hour slice busier than the last
    for start_ms, observed in zip(range(0, 20_000, 4_000), per_window, strict=True):
        _assert_poisson_count(observed, expected_count(ramp, start_ms, start_ms + 4_000))
    _assert_poisson_count(_count_between(times, 20_000, 30_000), 21_000)


def test_spike_window_is_denser_by_its_multiplier():
    spike = Spike(base_rate_per_s=1_000.0, multiplier=8.0, start_ms=10_000, duration_ms=2_000)
    times = _times(spike, max_duration_ms=20_000)
    inside = _count_between(times, 10_000, 12_000)
    before = _count_between(times, 0, 10_000)
    after = _count_between(times, 12_000, 20_000)
    _assert_poisson_count(inside, 16_000)
    _assert_poisson_count(before, 10_000)
    _assert_poisson_count(after, 8_000)
    inside_per_ms, outside_per_ms = inside / 2_000, (before + after) / 18_000
    assert inside_per_ms / outside_per_ms == pytest.approx(8.0, rel=0.05)


def test_spike_inside_one_thinning_block():
    # A spike shorter than a block, straddling a block edge, still gets its arrivals.
    spike = Spike(100.0, 50.0, start_ms=1_900, duration_ms=300)
    times = _times(spike, max_duration_ms=5_000)
    _assert_poisson_count(_count_between(times, 1_900, 2_200), 1_500)


def test_day_curve_formula_has_two_peaks():
    day = DayCurve(base_rate_per_s=100.0, morning_extra_per_s=900.0, evening_extra_per_s=600.0,
                   day_ms=86_400_000)
    hour_ms = 3_600_000
    assert day.rate_per_s(8 * hour_ms) == pytest.approx(1000.0, rel=1e-3)
    assert day.rate_per_s(18 * hour_ms) == pytest.approx(700.0, rel=1e-2)
    assert day.rate_per_s(2 * hour_ms) == pytest.approx(100.0, abs=1.0)  # night: base only
    by_hour = [day.rate_per_s(h * hour_ms) for h in range(24)]
    peaks = [h for h in range(24) if by_hour[h] > by_hour[h - 1] and by_hour[h] > by_hour[(h + 1) % 24]]
    assert peaks == [8, 18]
    assert by_hour[13] < by_hour[8] and by_hour[13] < by_hour[18]
    # Periodic: a soak replaying two days sees the same curve twice.
    assert day.rate_per_s(30 * hour_ms) == pytest.approx(day.rate_per_s(6 * hour_ms))


def test_compressed_day_replay_has_its_total_and_two_peaks():
    day_ms = 240_000  # a whole day in four minutes
    day = DayCurve.for_total_taps(200_000, day_ms)
    assert expected_count(day, 0, day_ms) == pytest.approx(200_000, rel=1e-6)
    times = _times(day, max_duration_ms=day_ms)
    _assert_poisson_count(len(times), 200_000)
    per_hour = Counter(int(day.hour_of(t)) for t in times)
    hourly = [per_hour[h] for h in range(24)]
    morning = max(range(4, 12), key=hourly.__getitem__)
    evening = max(range(14, 22), key=hourly.__getitem__)
    assert morning in (7, 8) and evening in (17, 18)
    midday = min(hourly[11:16])
    assert hourly[morning] > 1.5 * midday and hourly[evening] > 1.5 * midday
    assert max(hourly[0:3]) < hourly[morning] / 3  # nights are quiet
    for h in (2, 8, 13, 18):
        _assert_poisson_count(hourly[h], expected_count(day, h * day_ms / 24, (h + 1) * day_ms / 24))


@pytest.mark.parametrize("profile", [
    Ramp(2_000.0, 10.0, 7_000),
    Spike(300.0, 0.25, 1_000, 3_000),  # a dip is a spike too
    DayCurve(50.0, 900.0, 700.0, day_ms=100_000),
    DayCurve(0.0, 900.0, 700.0, day_ms=100_000, morning_hour=23.5, evening_width_h=0.3),
])
def test_profile_bound_covers_its_rate(profile):
    rng = random.Random(SEED)
    for _ in range(300):
        start_ms = rng.uniform(0, 200_000)
        end_ms = start_ms + rng.choice([1.0, 100.0, 1_000.0, 30_000.0])
        bound = profile.max_rate_per_s(start_ms, end_ms)
        for _ in range(20):
            assert profile.rate_per_s(rng.uniform(start_ms, end_ms)) <= bound * (1 + 1e-9)


def test_a_profile_that_breaks_its_bound_is_a_loud_bug():
    class Liar:
        def rate_per_s(self, t_ms):
            return 2_000.0

        def max_rate_per_s(self, start_ms, end_ms):
            return 1_000.0

    with pytest.raises(ValueError, match="exceeds its bound"):
        _times(Liar(), max_duration_ms=1_000)


def test_bad_parameters_are_refused():
    for make in (lambda: Steady(-1.0), lambda: Steady(math.inf), lambda: Ramp(1.0, 2.0, 0),
                 lambda: DayCurve(1.0, 1.0, 1.0, day_ms=0), lambda: TerminalPicker(0),
                 lambda: TerminalPicker(2, [1.0]), lambda: sender_of(3, 0)):
        with pytest.raises(ValueError):
            make()


def test_terminals_uniform_and_weighted():
    rng = random.Random(SEED)
    uniform = TerminalPicker(10)
    counts = Counter(uniform.pick(rng) for _ in range(50_000))
    assert set(counts) == set(range(10))
    assert all(abs(c - 5_000) < SIGMAS * math.sqrt(5_000) for c in counts.values())
    weighted = TerminalPicker(3, [1.0, 0.0, 3.0])
    counts = Counter(weighted.pick(rng) for _ in range(40_000))
    assert counts[1] == 0
    assert counts[2] / counts[0] == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize("n_senders", [1, 2, 3, 7])
def test_split_among_senders_is_a_partition(n_senders):
    def whole():
        return arrivals(Spike(2_000.0, 3.0, 1_000, 500), random.Random(SEED),
                        TerminalPicker(101), max_count=8_000, max_duration_ms=10_000)

    full = list(whole())
    # Each process regenerates the stream from the seed and keeps its own share.
    shares = [list(for_sender(whole(), k, n_senders)) for k in range(n_senders)]
    indexes = [a.index for share in shares for a in share]
    assert len(indexes) == len(set(indexes)) == len(full)  # nothing duplicated, nothing lost
    assert sorted((a for share in shares for a in share), key=lambda a: a.index) == full
    terminals_of = [{a.terminal for a in share} for share in shares]
    for k, terminals in enumerate(terminals_of):
        assert all(sender_of(t, n_senders) == k for t in terminals)  # a terminal has one owner
        for other in terminals_of[k + 1:]:
            assert not terminals & other
    for share in shares:  # each share keeps schedule order, so seqs rise with time
        assert [a.send_at_ms for a in share] == sorted(a.send_at_ms for a in share)
    if n_senders > 1:
        sizes = [len(s) for s in shares]
        assert min(sizes) > 0.5 * len(full) / n_senders  # roughly even


def test_sender_out_of_range_is_refused():
    with pytest.raises(ValueError):
        for_sender([], 3, 3)


def test_scaled_profile_splits_the_rate_and_its_bound() -> None:
    from citycard.loadtest.schedule import Scaled

    part = Scaled(Spike(100.0, 10.0, 1000.0, 500.0), 0.25)
    assert part.rate_per_s(0.0) == 25.0
    assert part.rate_per_s(1200.0) == 250.0
    assert part.max_rate_per_s(0.0, 2000.0) == 250.0
    with pytest.raises(ValueError):
        Scaled(Steady(1.0), 1.5)


@pytest.mark.parametrize("weights", [None, [1.0, 5.0, 0.0, 2.5]])
def test_arrival_chunks_are_the_arrivals_stream_in_lists(weights) -> None:
    from citycard.loadtest.schedule import arrival_chunks, arrivals

    picker = TerminalPicker(4, weights)
    one = [(a.send_at_ms, a.terminal) for a in arrivals(Steady(500.0), random.Random(3), picker,
                                                          max_count=2000, max_duration_ms=10_000.0)]
    chunks = list(arrival_chunks(Steady(500.0), random.Random(3), picker, max_count=2000,
                                 max_duration_ms=10_000.0, chunk=300))
    assert [len(t) for t, _ in chunks][:-1] == [300] * (len(chunks) - 1)
    assert [(t, k) for times, terms in chunks for t, k in zip(times, terms, strict=True)] == one
