"""The region lab's find-max (region/findmax.py) without platforms: which step stops the
search and why, that the max is the last step that passed, and that half of it is run."""

import asyncio
from typing import Any

from citycard.domain.results import Result
from citycard.region.findmax import FindMaxSpec, search, step_figures, stop_reason
from citycard.region.traffic import TapRecord


def _taps(n: int, cross_ms: float, home_ms: float, code: int = int(Result.OK)) -> list[TapRecord]:
    out = []
    for i in range(n):
        cross = i % 5 == 0
        out.append(TapRecord("C01", "C02" if cross else "C01", 100, i + 1, 1, code, 200, i * 0.01,
                             cross_ms if cross else home_ms))
    return out


def test_stop_reasons() -> None:
    ok = step_figures(_taps(300, 40.0, 20.0), 10.0, 2, 15.0, {"gateway": 1.5})
    assert stop_reason(ok, 100.0, []) is None
    assert ok["cpu_ms_per_tap"] == 5.0 and ok["cross_city_taps"] == 60
    assert "p99" in (stop_reason(step_figures(_taps(300, 140.0, 20.0), 10.0, 2, 15.0, {}), 100.0, []) or "")
    # home taps' latency is reported, not bound
    assert stop_reason(step_figures(_taps(300, 40.0, 900.0), 10.0, 2, 15.0, {}), 100.0, []) is None
    failed = step_figures(_taps(300, 40.0, 20.0, code=-1), 10.0, 2, 15.0, {})
    assert failed["failed"] == 300 and "without a final answer" in (stop_reason(failed, 100.0, []) or "")
    busy = step_figures(_taps(300, 40.0, 20.0, code=int(Result.BUSY)), 10.0, 2, 15.0, {})
    assert "without a final answer" in (stop_reason(busy, 100.0, []) or "")
    behind = step_figures(_taps(200, 40.0, 20.0), 10.0, 2, 15.0, {})  # 13.3/s made of 20/s offered
    assert "offered" in (stop_reason(behind, 100.0, []) or "")
    assert (stop_reason(ok, 100.0, ["C01/100: connect"]) or "").startswith("errors")


class _Lab:
    """p99 grows with the rate: 10 ms a tap a second per city."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float]] = []

    async def run(self, rate: float, seconds: float) -> tuple[dict[str, Any], list[str]]:
        self.runs.append((rate, seconds))
        n = int(rate * 2 * seconds)
        return step_figures(_taps(n, rate * 10.0, 5.0), rate, 2, seconds, {}), []


def test_search_stops_at_the_first_step_past_the_bound_and_runs_half_the_max() -> None:
    lab = _Lab()
    spec = FindMaxSpec(cities=2, start_rate=4.0, factor=1.5, max_steps=10, step_s=10.0, half_s=20.0,
                       p99_bound_ms=100.0)
    out = asyncio.run(search(lab, spec, lambda _m: None))  # type: ignore[arg-type]
    # 4, 6, 9 pass (p99 40, 60, 90 ms); 13.5 is past the bound (135 ms), again: the max is 9
    assert [r for r, _ in lab.runs] == [4.0, 6.0, 9.0, 13.5, 13.5, 4.5]
    assert out["max_rate_per_city"] == 9.0 and out["max_taps_per_s"] == 18.0
    assert [s["stop_reason"] is None for s in out["steps"]] == [True, True, True, False, False]
    assert [s["retry"] for s in out["steps"]] == [False, False, False, False, True]
    assert lab.runs[-1] == (4.5, 20.0) and out["half_max"]["latency_ms"]["cross_city"]["p99"] == 45.0
    assert not out["reached_step_limit"]


def test_no_step_passing_is_said_and_the_step_limit_is_kept() -> None:
    lab = _Lab()
    out = asyncio.run(search(lab, FindMaxSpec(cities=2, start_rate=20.0, p99_bound_ms=100.0),  # type: ignore[arg-type]
                             lambda _m: None))
    assert out["max_rate_per_city"] is None and len(out["steps"]) == 2 and lab.runs[-1][0] == 10.0
    lab2 = _Lab()
    out2 = asyncio.run(search(lab2, FindMaxSpec(cities=2, start_rate=1.0, max_steps=2,  # type: ignore[arg-type]
                                                p99_bound_ms=100.0), lambda _m: None))
    assert out2["reached_step_limit"] and len(out2["steps"]) == 2 and out2["max_rate_per_city"] == 1.3


class _StallOnce(_Lab):
    """The first run at 6 taps/s/city meets a stall (p99 500 ms); its retry does not."""

    async def run(self, rate: float, seconds: float) -> tuple[dict[str, Any], list[str]]:
        fig, errors = await super().run(rate, seconds)
        if rate == 6.0 and sum(1 for r, _ in self.runs if r == 6.0) == 1:
            fig["latency_ms"]["cross_city"]["p99"] = 500.0
        return fig, errors


def test_one_stall_is_run_again_and_the_search_goes_on() -> None:
    lab = _StallOnce()
    spec = FindMaxSpec(cities=2, start_rate=4.0, factor=1.5, step_s=10.0, half_s=20.0, p99_bound_ms=100.0)
    out = asyncio.run(search(lab, spec, lambda _m: None))  # type: ignore[arg-type]
    assert [r for r, _ in lab.runs] == [4.0, 6.0, 6.0, 9.0, 13.5, 13.5, 4.5]
    assert out["max_rate_per_city"] == 9.0
    lab0 = _StallOnce()
    out0 = asyncio.run(search(lab0, FindMaxSpec(cities=2, start_rate=4.0, factor=1.5, retries=0,  # type: ignore[arg-type]
                                                p99_bound_ms=100.0), lambda _m: None))
    assert out0["max_rate_per_city"] == 4.0 and [r for r, _ in lab0.runs] == [4.0, 6.0, 2.0]
