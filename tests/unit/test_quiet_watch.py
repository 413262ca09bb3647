"""When a shard may take a due snapshot: its journal rate against its own recent peak."""

import pytest

from citycard.actors.quiet import QuietWatch


def _feed(watch: QuietWatch, start_s: float, seconds: int, rows_per_s: int) -> float:
    for k in range(seconds):
        watch.add(start_s + k, rows_per_s)
    return start_s + seconds


def test_busy_at_the_peak_and_quiet_in_the_lull() -> None:
    watch = QuietWatch(0.5)
    assert watch.quiet(0.0)  # nothing known yet: a snapshot need not wait
    t = _feed(watch, 0.0, 60, 4_000)
    assert not watch.quiet(t)  # steady at its own highest rate: busy
    t = _feed(watch, t, 60, 15_000)  # the peak
    assert not watch.quiet(t)
    t = _feed(watch, t, 20, 9_000)  # over half the peak: still busy
    assert not watch.quiet(t)
    t = _feed(watch, t, 20, 7_000)  # under half: the lull
    assert watch.quiet(t)


def test_idle_time_counts_as_quiet_and_the_peak_is_forgotten() -> None:
    watch = QuietWatch(0.5, bucket_s=10.0, memory_s=100.0)
    t = _feed(watch, 0.0, 30, 10_000)
    assert watch.quiet(t + 25)  # no rows for two buckets
    t = _feed(watch, t + 200, 30, 3_000)  # the peak left the memory: 3,000 is the highest now
    assert not watch.quiet(t)


def test_fraction_one_never_waits_and_a_bad_fraction_is_refused() -> None:
    watch = QuietWatch(1.0)
    _feed(watch, 0.0, 60, 5_000)
    assert watch.quiet(60.0)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            QuietWatch(bad)


def test_a_busy_host_is_not_quiet_even_when_the_shard_journals_little() -> None:
    """An overloaded gateway feeds its shards less: their rate drops, and only the host's CPU
    shows that this is no lull."""
    cpu = {"idle_s": 0.0, "total_s": 0.0}

    def spend(seconds: float, idle_share: float) -> None:
        cpu["total_s"] += 2 * seconds  # two cores
        cpu["idle_s"] += 2 * seconds * idle_share

    watch = QuietWatch(0.5, cpu_idle_min=0.25, cpu_times=lambda: (cpu["idle_s"], cpu["total_s"]))
    t = 0.0
    for _ in range(6):  # the peak, the machine flat out
        spend(10, 0.02)
        t = _feed(watch, t, 10, 15_000)
    for _ in range(3):  # the shard journals a third of its peak, the host still busy: no lull
        spend(10, 0.05)
        t = _feed(watch, t, 10, 5_000)
    assert not watch.quiet(t) and watch.cpu_idle is not None and watch.cpu_idle < 0.25
    spend(10, 0.6)  # the real lull
    t = _feed(watch, t, 10, 5_000)
    assert watch.quiet(t) and watch.cpu_idle == pytest.approx(0.6)


def test_a_steady_load_on_an_idle_host_is_quiet() -> None:
    """A steady load never falls to half its own peak; an idle host is quiet all the same, so
    snapshots keep their interval instead of waiting for the row bound."""
    cpu = {"idle_s": 0.0, "total_s": 0.0}
    watch = QuietWatch(0.5, cpu_idle_min=0.25, cpu_times=lambda: (cpu["idle_s"], cpu["total_s"]))
    t = 0.0
    for idle_share in (0.9, 0.9, 0.9, 0.3, 0.3):
        cpu["total_s"] += 20
        cpu["idle_s"] += 20 * idle_share
        t = _feed(watch, t, 10, 50)
        assert watch.quiet(t) == (idle_share >= 0.5)
