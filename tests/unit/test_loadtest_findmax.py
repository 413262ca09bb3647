"""The lab's find-max search (loadtest/measure.search_steps) without a platform: a step that
fails only on p99 runs once more at the same rate, and the maximum is the best step that passed."""

import asyncio

from citycard.loadtest.measure import (
    FIND_MAX_FACTOR,
    FIND_MAX_STEPS,
    StepFigures,
    search_steps,
    step_stop,
)

BOUND_MS = 100.0


def _lab(capacity_per_s: float, stalls: set[int] = frozenset()):
    """Accepts up to its capacity with p99 20 ms, 500 ms beyond it; the runs numbered in
    ``stalls`` have one stalled second (p99 400 ms) whatever the rate."""
    calls: list[tuple[float, int]] = []

    async def run_step(rate: float, k: int) -> StepFigures:
        calls.append((rate, k))
        over = rate > capacity_per_s
        p99 = 400.0 if k in stalls else (500.0 if over else 20.0)
        return StepFigures(min(rate, capacity_per_s), p99, 0, int(rate * 6), False)

    return run_step, calls


def test_a_single_stalled_step_is_run_again_and_the_search_goes_on() -> None:
    run_step, calls = _lab(5_000, stalls={1})
    steps, best = asyncio.run(search_steps(run_step, 1_000, BOUND_MS))
    assert calls[1][0] == calls[2][0] == 1_000 * FIND_MAX_FACTOR  # the stalled rate ran twice
    assert steps[1]["retried"] and steps[1]["stop_reason"] is None and "p99 400.0" in steps[1]["retry_reason"]
    assert not steps[2]["retried"]
    assert steps[-1]["stop_reason"].startswith("p99 500.0")  # stopped at capacity, after its own retry
    assert steps[-2]["retried"] and steps[-2]["rate_per_s"] == steps[-1]["rate_per_s"]
    passed = [s["accepted_per_s"] for s in steps if s["stop_reason"] is None and not s["retried"]]
    assert best == max(passed) and best <= 5_000


def test_two_failures_at_one_rate_stop_the_search() -> None:
    run_step, calls = _lab(1e9, stalls={0, 1})
    steps, best = asyncio.run(search_steps(run_step, 1_000, BOUND_MS))
    assert [rate for rate, _ in calls] == [1_000, 1_000]
    assert best == 0 and steps[-1]["stop_reason"].startswith("p99 400.0")  # no step within the bound


def test_the_search_is_bounded_in_rates() -> None:
    run_step, calls = _lab(1e12)
    steps, _ = asyncio.run(search_steps(run_step, 1_000, BOUND_MS))
    assert len(steps) == FIND_MAX_STEPS and steps[-1]["stop_reason"] is None


def test_stop_reasons_other_than_p99_are_not_retried() -> None:
    async def erroring(rate: float, k: int) -> StepFigures:
        return StepFigures(rate, 10.0, 0, 100, True)

    steps, best = asyncio.run(search_steps(erroring, 1_000, BOUND_MS))
    assert len(steps) == 1 and steps[0]["stop_reason"] == "sender errors"
    assert step_stop(StepFigures(1_000, 10.0, 50, 1_000, False), 0.0, BOUND_MS) == "50 timeouts"
    assert step_stop(StepFigures(1_000, 10.0, 0, 1_000, False), 990.0, BOUND_MS) == "accepted rate stopped rising"
    assert step_stop(StepFigures(1_100, 10.0, 0, 1_000, False), 1_000.0, BOUND_MS) is None
