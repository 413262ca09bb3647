"""One measured phase of the load lab (the schedule run, CPU by process and memory over time
while it runs, a storm beside it), and the find-max search built on it."""

from __future__ import annotations

import asyncio
import os
import time
from argparse import Namespace
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import procs
from .lab import Phase, PhaseResult, run_phase
from .offline_sender import OfflineSpec
from .scenarios import Storm, run_storm
from .schedule import Steady
from .targets import CityView, Target

FIND_MAX_FACTOR = 1.3
FIND_MAX_STEPS = 12
FIND_MAX_RISE = 1.03  # a step must accept 3 % more than the best so far to count as rising
STOP_NOT_RISING = "accepted rate stopped rising"
MEMORY_EVERY_S = 5.0
MEMORY_MIN_EVERY_S = 0.25
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def run_scope(target: Target) -> procs.RunScope:
    """This run's own processes: its platform under this process, or the process listening on
    the target's port when that is on this machine; Postgres backends if Postgres is here."""
    db = urlsplit(target.db_url)
    db_port = (db.port or 5432) if db.hostname in LOCAL_HOSTS else None
    if target.platform is not None:
        return procs.RunScope(frozenset({os.getpid()}), os.getpid(), db_port)
    gateway = procs.listener_pid(target.endpoint.port) if target.endpoint.host in LOCAL_HOSTS else None
    return procs.RunScope(frozenset({os.getpid(), *([gateway] if gateway else [])}), gateway, db_port)


def memory_every_s(duration_s: float) -> float:
    """Every MEMORY_EVERY_S, but at least ~20 points in a short run."""
    return min(MEMORY_EVERY_S, max(MEMORY_MIN_EVERY_S, duration_s / 20))


async def run_measured(phase: Phase, target: Target, view: CityView, show: bool, phases: list[PhaseResult],
                 storm: Storm | None = None, offline: OfflineSpec | None = None) -> PhaseResult:
    scope = run_scope(target)
    before: dict[int, procs.Sample] = {}
    memory: list[dict[str, float]] = []
    every_s = memory_every_s(phase.duration_s)

    async def watch(origin_unix_s: float) -> None:
        """CPU by process from the origin on, and memory every ``every_s``, while the
        schedule runs."""
        await asyncio.sleep(max(0.0, origin_unix_s - time.time()))
        before.update(await asyncio.to_thread(procs.own_snapshot, scope))
        for k in range(int(phase.duration_s // every_s) + 1):
            await asyncio.sleep(max(0.0, origin_unix_s + k * every_s - time.time()))
            snap = await asyncio.to_thread(procs.own_snapshot, scope)
            memory.append({"t_s": k * every_s, **procs.memory_mb_by_role(snap.values())})

    async def during(origin_unix_s: float) -> None:
        jobs = [watch(origin_unix_s)]
        if storm is not None:
            assert target.api_url and target.api_token
            jobs.append(run_storm(storm, target.api_url, target.api_token, view.home_cards, origin_unix_s, phase.seed))
        await asyncio.gather(*jobs)

    res = await run_phase(phase, target.endpoint, view.terminals, view.home_cards, view.visitor_cards,
                          view.first_seq, show_live=show, during=during, offline=offline)
    after = await asyncio.to_thread(procs.own_snapshot, scope)
    cpu = procs.cpu_by_role(before, after) if before else {}
    cpu["senders (load generator)"] = res.sender_cpu_s
    if res.offline is not None and "cpu_s" in res.offline:
        cpu["offline uploader (load generator)"] = res.offline["cpu_s"]
    res.extra = {"cpu_s": cpu, "memory_mb": memory}
    view.first_seq.update({tid: seq + 1 for tid, seq in res.last_seq.items()})
    phases.append(res)
    return res


@dataclass(frozen=True)
class StepFigures:
    """What one find-max step measured."""
    accepted_per_s: float
    p99_ms: float
    timeouts: int
    scheduled: int
    errors: bool


def step_stop(fig: StepFigures, best_per_s: float, bound_ms: float) -> str | None:
    """Why the search stops at this step, or None to step up."""
    if fig.errors:
        return "sender errors"
    if fig.p99_ms > bound_ms:
        return f"p99 {fig.p99_ms:.1f} ms above the bound {bound_ms:g} ms"
    if fig.timeouts > 0.01 * max(fig.scheduled, 1):
        return f"{fig.timeouts:,} timeouts"
    if fig.accepted_per_s < best_per_s * FIND_MAX_RISE:
        return STOP_NOT_RISING
    return None


async def search_steps(run_step: Callable[[float, int], Awaitable[StepFigures]], start_per_s: float,
                       bound_ms: float) -> tuple[list[dict[str, Any]], float]:
    """Step the rate up by FIND_MAX_FACTOR until a step fails. A step whose only fault is its
    p99 runs once more at the same rate: one stalled second in a short step is enough to
    push its p99 over, and the maximum should not hang on it. Returns (steps, best accepted/s
    of a step within the bound)."""
    steps: list[dict[str, Any]] = []
    best = 0.0
    rate = start_per_s
    retried = False
    for k in range(2 * FIND_MAX_STEPS):  # each rate runs at most twice
        fig = await run_step(rate, k)
        stop = step_stop(fig, best, bound_ms)
        step = {"rate_per_s": rate, "accepted_per_s": fig.accepted_per_s, "p99_ms": fig.p99_ms,
                "timeouts": fig.timeouts, "stop_reason": stop, "retried": False}
        steps.append(step)
        if stop is not None and stop.startswith("p99") and not retried:
            step["stop_reason"], step["retried"] = None, True
            step["retry_reason"] = stop
            retried = True
            continue
        if stop is None or stop == STOP_NOT_RISING:  # a step over the bound is not a maximum
            best = max(best, fig.accepted_per_s)
        if stop or sum(not s["retried"] for s in steps) >= FIND_MAX_STEPS:
            break
        rate *= FIND_MAX_FACTOR
        retried = False
    return steps, best


async def find_max(args: Namespace, target: Target, view: CityView, show: bool,
                   phases: list[PhaseResult]) -> dict[str, Any]:
    step_s, bound = float(args.step_seconds), float(args.p99_bound_ms)

    async def run_step(rate: float, k: int) -> StepFigures:
        phase = Phase(f"find-max {rate:,.0f}/s", Steady(rate), step_s, int(rate * step_s * 1.2) + 1000,
                      senders=args.senders, linger_ms=args.linger_ms, max_batch=args.batch,
                      timeout_ms=args.timeout_ms, replay_share=args.replay_share, seed=args.seed + k)
        res = await run_measured(phase, target, view, show, phases)
        return StepFigures(accepted_in_window(res), res.totals.percentiles().p99_ms, res.totals.timeouts,
                           res.scheduled, bool(res.errors))

    steps, best = await search_steps(run_step, float(args.rate), bound)
    half_rate = best / 2
    half = await run_measured(Phase(f"half of max {half_rate:,.0f}/s", Steady(half_rate), step_s,
                              int(half_rate * step_s * 1.2) + 1000, senders=args.senders,
                              linger_ms=args.linger_ms, max_batch=args.batch, timeout_ms=args.timeout_ms,
                              replay_share=args.replay_share, seed=args.seed + 100),
                        target, view, show, phases)
    return {"steps": steps, "max_accepted_per_s": best, "p99_bound_ms": bound,
            "half_max": {"rate_per_s": half_rate, "accepted_per_s": accepted_in_window(half),
                         "p99_ms": half.totals.percentiles().p99_ms}}


def accepted_in_window(res: PhaseResult) -> float:
    """Final answers per second that came while the schedule ran: a server's throughput,
    without the backlog it drains after the offered load stopped."""
    window_ms = res.phase.duration_s * 1000.0
    answered = sum(s.answered for s in res.intervals if s.start_ms < window_ms)
    return answered / res.phase.duration_s if res.phase.duration_s else 0.0
