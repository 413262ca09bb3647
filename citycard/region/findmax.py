"""``citycard region lab --find-max``: the region lab's cities, no outage and no clearing, the
per-city tap rate stepped up until the cross-city p99 passes a bound (or taps fail, or the
terminals cannot keep up), then a run at half of the highest rate that passed: the figure of
issue 15 ("cross-city p99 at most 100 ms at half of the lab's maximum"). The search is the
load lab's (loadtest/measure.py): a factor per step, a bounded number of steps."""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ..cli.services import Services
from ..config.settings import Settings
from ..domain.results import Result
from ..loadtest import procs
from . import cities as cities_mod
from .cities import LabCity
from .summary import latency
from .traffic import TapRecord, TrafficPlan, drive

log = logging.getLogger(__name__)
MIN_KEPT_UP = 0.8  # a step whose terminals made under 80 % of the offered taps is past the max
MAX_FAILED_SHARE = 0.001  # taps with no final answer (timeout, BUSY/RETRY after the resends)
_UNDECIDED = (int(Result.BUSY), int(Result.RETRY), int(Result.SEQ_TOO_OLD))


@dataclass(frozen=True)
class FindMaxSpec:
    cities: int = 10
    cards: int = 2000
    terminals: int = 8  # per city; the lab's terminals wait for each answer, so a rate needs enough of them
    account_shards: int = 1
    visitor_share: float = 0.2
    floor_limit_fen: int = 2000
    schema_prefix: str = "region_lab"
    start_rate: float = 5.0  # taps a second per city, first step
    factor: float = 1.3
    max_steps: int = 10
    step_s: float = 15.0
    half_s: float = 30.0
    p99_bound_ms: float = 100.0
    retries: int = 1  # a step past the bound is run again this often before the search stops

    def check(self) -> None:
        if not 2 <= self.cities <= cities_mod.MAX_CITIES:
            raise ValueError(f"--cities must be 2..{cities_mod.MAX_CITIES}")
        if not 100 <= self.cards <= 1_000_000 or not 1 <= self.terminals <= 100:
            raise ValueError("--cards must be 100..1000000 and --terminals 1..100")
        if not 0.1 <= self.start_rate <= 5000 or not 1.05 <= self.factor <= 4 or not 1 <= self.max_steps <= 30:
            raise ValueError("--start-rate must be 0.1..5000, the factor 1.05..4 and --max-steps 1..30")
        if not 2.0 <= self.step_s <= 600 or not 2.0 <= self.half_s <= 600:
            raise ValueError("--step-s and --half-s must be 2..600")
        if not 0.0 < self.visitor_share <= 1.0 or not 1.0 <= self.p99_bound_ms <= 60_000:
            raise ValueError("--visitor-share must be in (0, 1] and --p99-bound-ms 1..60000")
        if not 0 <= self.retries <= 3:
            raise ValueError("--step-retries must be 0..3")


def step_figures(taps: list[TapRecord], rate_per_city: float, n_cities: int, seconds: float,
                 cpu_s: dict[str, float]) -> dict[str, Any]:
    cross = [t for t in taps if t.cross]
    failed = sum(1 for t in taps if t.code < 0 or t.code in _UNDECIDED)
    cpu_total = sum(cpu_s.values())
    return {"rate_per_city": round(rate_per_city, 2), "offered_per_s": round(rate_per_city * n_cities, 1),
            "taps_per_s": round(len(taps) / seconds, 1) if seconds else 0.0, "taps": len(taps),
            "cross_city_taps": len(cross), "failed": failed,
            "cross_city_ok": sum(1 for t in cross if t.code == int(Result.OK)),
            "latency_ms": {"cross_city": latency(cross), "home": latency([t for t in taps if not t.cross])},
            "cpu_s": {k: round(v, 2) for k, v in cpu_s.items()},
            "cpu_ms_per_tap": round(cpu_total * 1000.0 / len(taps), 2) if taps else None}


def stop_reason(fig: dict[str, Any], bound_ms: float, errors: list[str]) -> str | None:
    """Why this step is past the max, or None if it passed."""
    if errors:
        return f"errors: {errors[0]}"
    if fig["failed"] > MAX_FAILED_SHARE * max(fig["taps"], 1):
        return f"{fig['failed']} taps without a final answer"
    p99 = fig["latency_ms"]["cross_city"]["p99"]
    if p99 > bound_ms:
        return f"cross-city p99 {p99:.1f} ms above the bound {bound_ms:g} ms"
    if fig["taps_per_s"] < MIN_KEPT_UP * fig["offered_per_s"]:
        return f"the terminals made {fig['taps_per_s']}/s of the {fig['offered_per_s']}/s offered"
    return None


def own_snapshot() -> dict[int, procs.Sample]:
    """procs.snapshot of this lab's processes only: this one, its Ray (started under it) and
    Postgres (every backend on the machine: it cannot tell whose). Other work's Ray actors on
    the machine are left out."""
    me = psutil.Process()
    try:
        tree = {me.pid} | {p.pid for p in me.children(recursive=True)}
    except psutil.Error:
        tree = {me.pid}
    return {pid: s for pid, s in procs.snapshot(me.pid).items() if pid in tree or s.role == "postgres"}


class _Runner:
    """One step after another on the same cities: seqs go on where the last step stopped."""

    def __init__(self, cities: list[LabCity], spec: FindMaxSpec) -> None:
        self.cities, self.spec = cities, spec
        self.next_seq = 0
        self.seed = 11

    async def run(self, rate_per_city: float, seconds: float) -> tuple[dict[str, Any], list[str]]:
        per_terminal = int(rate_per_city / self.spec.terminals * seconds * 1.2) + 10
        plan = TrafficPlan(seconds, rate_per_city, self.spec.visitor_share, per_terminal, seed=self.seed,
                           first_seq=self.next_seq)
        self.seed += 1
        self.next_seq += per_terminal + 1
        before = await asyncio.to_thread(own_snapshot)
        t0 = time.perf_counter()
        taps, errors, _ = await drive(self.cities, plan, t0)
        elapsed_s = time.perf_counter() - t0
        after = await asyncio.to_thread(own_snapshot)
        return step_figures(taps, rate_per_city, len(self.cities), max(elapsed_s, seconds),
                            procs.cpu_by_role(before, after)), errors


async def search(runner: _Runner, spec: FindMaxSpec, progress: Callable[[str], None]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    best: float | None = None
    rate = spec.start_rate
    for _ in range(spec.max_steps):
        for attempt in range(spec.retries + 1):  # a stall of the shared box fails one step, not the search
            fig, errors = await runner.run(rate, spec.step_s)
            fig["stop_reason"] = stop_reason(fig, spec.p99_bound_ms, errors)
            fig["retry"] = attempt > 0
            steps.append(fig)
            progress(f"{rate:.1f} taps/s/city{' (again)' if attempt else ''}: cross p99"
                     f" {fig['latency_ms']['cross_city']['p99']:.1f} ms, home p99 {fig['latency_ms']['home']['p99']:.1f}"
                     f" ms, {fig['taps_per_s']}/s made{'; ' + fig['stop_reason'] if fig['stop_reason'] else ''}")
            if fig["stop_reason"] is None:
                break
        if fig["stop_reason"]:
            break
        best = rate
        rate *= spec.factor
    out: dict[str, Any] = {"p99_bound_ms": spec.p99_bound_ms, "steps": steps,
                           "max_rate_per_city": round(best, 2) if best is not None else None,
                           "max_taps_per_s": round(best * spec.cities, 1) if best is not None else None,
                           "reached_step_limit": steps[-1]["stop_reason"] is None}
    half_rate = (best if best is not None else spec.start_rate) / 2
    fig, errors = await runner.run(half_rate, spec.half_s)
    fig["errors"] = errors[:10]
    out["half_max"] = fig
    progress(f"half of max, {half_rate:.1f} taps/s/city: cross p99 {fig['latency_ms']['cross_city']['p99']:.1f} ms,"
             f" home p99 {fig['latency_ms']['home']['p99']:.1f} ms")
    return out


async def run_find_max(base: Settings, services: Services, spec: FindMaxSpec, key_dir: Path,
                       progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    spec.check()
    specs = cities_mod.plan_specs(spec.cities, spec.schema_prefix)
    issuers = cities_mod.registry(specs, spec.floor_limit_fen)
    started: list[LabCity] = []
    t_start = time.perf_counter()
    try:
        for s in specs:
            settings = cities_mod.city_settings(base, s, issuers, key_dir, spec.account_shards)
            started.append(await cities_mod.start_city(settings, services, s, spec.cards, spec.terminals))
            progress(f"{s.code} up (gateway :{started[-1].platform.gateway_port}, link :{s.link_port})")
        startup_s = time.perf_counter() - t_start
        result = await search(_Runner(started, spec), spec, progress)
        half = result["half_max"]
        ok = result["max_rate_per_city"] is not None and half["latency_ms"]["cross_city"]["p99"] <= spec.p99_bound_ms
        return {"run": {**dataclasses.asdict(spec), "startup_s": round(startup_s, 2),
                        "total_s": round(time.perf_counter() - t_start, 2)}, "ok": ok, "find_max": result}
    finally:
        for c in reversed(started):
            try:
                await c.platform.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others all the same
                log.warning("stopping %s: %r", c.code, exc)


def summary_lines(report: dict[str, Any]) -> list[str]:
    fm = report["find_max"]
    lines = [f"region lab find-max, {report['run']['cities']} cities, cross-city p99 bound {fm['p99_bound_ms']:g} ms"]
    for s in fm["steps"]:
        lat = s["latency_ms"]
        lines.append(f"  {s['rate_per_city']:>7.1f}/s/city{'*' if s.get('retry') else ' '} made {s['taps_per_s']:>7.1f}/s  cross p99"
                     f" {lat['cross_city']['p99']:>7.1f} ms  home p99 {lat['home']['p99']:>7.1f} ms"
                     f"  cpu {s['cpu_ms_per_tap']} ms/tap  {s['stop_reason'] or 'pass'}")
    h = fm["half_max"]
    if any(s.get("retry") for s in fm["steps"]):
        lines.append("  (* a step run again after it failed)")
    lines.append(f"  max {fm['max_rate_per_city']}/s/city ({fm['max_taps_per_s']}/s in all);"
                 f" at half ({h['rate_per_city']}/s/city): cross p99 {h['latency_ms']['cross_city']['p99']} ms,"
                 f" home p99 {h['latency_ms']['home']['p99']} ms")
    return lines


__all__ = ["FindMaxSpec", "run_find_max", "search", "step_figures", "stop_reason", "summary_lines"]
