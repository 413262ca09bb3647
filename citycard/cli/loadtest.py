"""``citycard loadtest``: drive a platform with a city's traffic, open loop, then audit it
against Postgres and write a JSON and an HTML report.

Against ``--target host:port`` (a platform started with ``citycard up`` on the same
configuration, whose city was seeded with ``citycard city seed``), or, without it, against a
platform of its own on the embedded defaults with a freshly seeded city.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import shlex
import sys
import time
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.settings import Settings
from ..domain.cards import HANGZHOU_ISSUER, CardStatus, issuer_of
from ..errors import CityCardError
from ..loadtest import audit as audit_mod
from ..loadtest import procs
from ..loadtest.city import (
    CityModel,
    TerminalPlan,
    city_for_scale,
    home_card_numbers,
    iter_city_cards,
    plan_city_terminals,
    seed_city,
    visitor_card_numbers,
)
from ..loadtest.lab import Endpoint, Phase, PhaseResult, pick_terminals, run_phase
from ..loadtest.latency import LatencyTotals, merge_intervals
from ..loadtest.schedule import DayCurve, Ramp, RateProfile, Spike, Steady
from ..loadtest.sender import read_answered
from ..loadtest.tapmix import TapMix
from ..persistence import db
from .runtime import Platform, Services, migrate_db, resolve_services

LOADTEST_SCHEMA = "citycard_loadtest"
SCENARIOS = ("steady", "ramp", "spike", "soak", "hot-card", "hotlist-storm", "regional")
CDF_PERCENTILES = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)
FIND_MAX_FACTOR = 1.3
FIND_MAX_STEPS = 12
FIND_MAX_RISE = 1.03
MEMORY_EVERY_S = 5.0  # a step must accept 3 % more than the best so far to count as rising


@dataclass
class Target:
    endpoint: Endpoint
    db_url: str
    schema: str
    account_shards: int | None
    description: str
    platform: Platform | None = None
    api_url: str | None = None
    api_token: str | None = None


@dataclass
class CityView:
    terminals: list[TerminalPlan]
    home_cards: Sequence[int]
    visitor_cards: list[int]
    first_seq: dict[int, int] = field(default_factory=dict)


@dataclass
class Storm:
    """Loss reports through the card-services API while the load runs."""

    per_s: float
    count: int
    start_s: float
    reported: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


# -- scenarios ---------------------------------------------------------------------------
def scenario_phase(args: Namespace, model: CityModel, hot_card: int) -> tuple[Phase, Storm | None]:
    """The phase a scenario (or ``--day``) runs, and its hotlist storm if it has one."""
    rate, duration_s = float(args.rate), float(args.duration)
    storm = None
    mix = TapMix()
    name = args.scenario
    profile: RateProfile
    if args.day:
        name = "day"
        duration_s = float(args.day_seconds)
        profile = DayCurve.for_total_taps(model.taps_per_day, duration_s * 1000.0)
    elif name in ("steady", "soak", "hot-card", "hotlist-storm", "regional"):
        profile = Steady(rate)
    elif name == "ramp":  # rush hour: a tenth of the rate to all of it over 60 % of the run
        profile = Ramp(rate / 10.0, rate, duration_s * 600.0)
    elif name == "spike":  # a quarter of the rate, and 4x that for a sixth of the run
        profile = Spike(rate / 4.0, 4.0, duration_s * 1000.0 / 3.0, duration_s * 1000.0 / 6.0)
    else:
        raise CityCardError(f"unknown scenario {name!r}: one of {', '.join(SCENARIOS)}")
    if name == "hot-card":
        mix = TapMix(hot_card=hot_card, hot_share=args.hot_share)
    elif name == "regional":
        mix = TapMix(visitor_share=args.visitor_share)
    elif name == "hotlist-storm":
        storm = Storm(per_s=args.storm_rate, count=max(1, int(args.storm_rate * duration_s / 2)),
                      start_s=duration_s / 4)
    max_taps = args.max_taps or int(rate * duration_s * 1.5) + 1000
    if args.day:
        max_taps = args.max_taps or int(model.taps_per_day * 1.2) + 1000
    return Phase(name, profile, duration_s, max_taps, mix, senders=args.senders, linger_ms=args.linger_ms,
                 max_batch=args.batch, timeout_ms=args.timeout_ms, replay_share=args.replay_share,
                 seed=args.seed), storm


def _describe(phase: Phase) -> str:
    p = phase.profile
    if isinstance(p, Steady):
        return f"steady {p.target_per_s:,.0f}/s for {phase.duration_s:g} s"
    if isinstance(p, Ramp):
        return f"ramp {p.from_rate_per_s:,.0f} -> {p.to_rate_per_s:,.0f}/s over {p.ramp_ms / 1000:g} s"
    if isinstance(p, Spike):
        return (f"spike {p.base_rate_per_s:,.0f}/s x{p.multiplier:g} at {p.start_ms / 1000:g} s "
                f"for {p.duration_ms / 1000:g} s")
    if isinstance(p, DayCurve):
        return f"a city day ({expected_day(p):,.0f} taps) in {p.day_ms / 1000:g} s"
    return repr(p)


def expected_day(curve: DayCurve) -> float:
    from ..loadtest.schedule import expected_count

    return expected_count(curve, 0.0, curve.day_ms)


# -- targets -----------------------------------------------------------------------------
async def seed_model(conn: Any, model: CityModel, n_shards: int, seed: int) -> list[TerminalPlan]:
    terminals = plan_city_terminals(model, seed)
    first = True
    for chunk in iter_city_cards(model, n_shards, seed):
        await seed_city(conn, chunk, terminals if first else [])
        first = False
    return terminals


async def own_platform(settings: Settings, services: Services, model: CityModel, seed: int,
                       with_api: bool) -> tuple[Target, CityView]:
    from .demo import reset_schema

    schema = settings.database.schema
    await reset_schema(services.db_url, schema)
    await migrate_db(settings, services.db_url)
    conn = await db.connect(services.db_url, schema)
    try:
        terminals = await seed_model(conn, model, settings.city.account_shards, seed)
        token = None
        if with_api:
            from ..api.auth import Role, create_token

            token = await create_token(conn, "loadtest", [Role.CLERK])
    finally:
        await conn.close()
    platform = Platform(settings, services)
    # metrics on the configured port (default 9108), so an operator can watch the run
    await platform.start(gateway_port=0, metrics_port=None, api_port=0 if with_api else -1)
    target = Target(
        Endpoint("127.0.0.1", platform.gateway_port, settings.city.master_key), services.db_url, schema,
        settings.city.account_shards, "own platform (embedded defaults)" if services.embedded else "own platform",
        platform=platform, api_url=f"http://127.0.0.1:{platform.api_port}" if with_api else None, api_token=token,
    )
    view = CityView(terminals, home_card_numbers(model), visitor_card_numbers(model))
    return target, view


async def remote_target(settings: Settings, services: Services, host: str, port: int,
                        api_url: str | None, api_token: str | None) -> tuple[Target, CityView]:
    """A running platform: its city is read from its database (the same configuration)."""
    schema = settings.database.schema
    conn = await db.connect(services.db_url, schema)
    try:
        rows = await conn.fetch("SELECT terminal_id, kind, route FROM terminals WHERE enabled ORDER BY terminal_id")
        if not rows:
            raise CityCardError(f"no terminals in {schema!r}: seed a city first (citycard city seed), "
                                "then start the platform (citycard up)")
        cards = await conn.fetch("SELECT card_no FROM cards WHERE status = $1 ORDER BY card_no",
                                 int(CardStatus.ACTIVE))
        last = await conn.fetch("SELECT terminal_id, max(seq) FROM journal WHERE terminal_id <> 0 GROUP BY 1")
    finally:
        await conn.close()
    terminals = [TerminalPlan(r[0], r[1], r[2]) for r in rows]
    home = [r[0] for r in cards if issuer_of(r[0]) == HANGZHOU_ISSUER]
    visitors = [r[0] for r in cards if issuer_of(r[0]) != HANGZHOU_ISSUER]
    if not home:
        raise CityCardError(f"no active home cards in {schema!r}: seed a city first (citycard city seed)")
    target = Target(Endpoint(host, port, settings.city.master_key), services.db_url, schema,
                    settings.city.account_shards, f"{host}:{port}", api_url=api_url, api_token=api_token)
    return target, CityView(terminals, home, visitors, {r[0]: int(r[1]) + 1 for r in last})


# -- the hotlist storm -------------------------------------------------------------------
async def run_storm(storm: Storm, target: Target, cards: Sequence[int], origin_unix_s: float, seed: int) -> None:
    import httpx

    assert target.api_url and target.api_token
    rng = random.Random(seed)
    victims = rng.sample(cards, min(storm.count, len(cards)))
    gate = asyncio.Semaphore(16)
    headers = {"Authorization": f"Bearer {target.api_token}"}
    await asyncio.sleep(max(0.0, origin_unix_s + storm.start_s - time.time()))
    started = time.monotonic()

    async def report(client: httpx.AsyncClient, card_no: int) -> None:
        async with gate:
            try:
                r = await client.post(f"/cards/{card_no}/loss", json={"reason": "load lab: hotlist storm"})
                if r.status_code == 200:
                    storm.reported += 1
                else:
                    storm.failed += 1
                    if len(storm.errors) < 20:
                        storm.errors.append(f"{card_no}: HTTP {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                storm.failed += 1
                if len(storm.errors) < 20:
                    storm.errors.append(f"{card_no}: {exc!r}")

    async with httpx.AsyncClient(base_url=target.api_url, headers=headers, timeout=30.0) as client:
        tasks = []
        for k, card_no in enumerate(victims):
            await asyncio.sleep(max(0.0, started + k / storm.per_s - time.monotonic()))
            tasks.append(asyncio.get_running_loop().create_task(report(client, card_no)))
        await asyncio.gather(*tasks)


# -- find-max ----------------------------------------------------------------------------
async def find_max(args: Namespace, target: Target, view: CityView, show: bool,
                   phases: list[PhaseResult]) -> dict[str, Any]:
    rate, step_s, bound = float(args.rate), float(args.step_seconds), float(args.p99_bound_ms)
    steps: list[dict[str, Any]] = []
    best = 0.0
    for k in range(FIND_MAX_STEPS):
        phase = Phase(f"find-max {rate:,.0f}/s", Steady(rate), step_s, int(rate * step_s * 1.2) + 1000,
                      senders=args.senders, linger_ms=args.linger_ms, max_batch=args.batch,
                      timeout_ms=args.timeout_ms, replay_share=args.replay_share, seed=args.seed + k)
        res = await _phase(phase, target, view, show, phases)
        accepted, p99 = accepted_in_window(res), res.totals.percentiles().p99_ms
        stop = None
        if res.errors:
            stop = "sender errors"
        elif p99 > bound:
            stop = f"p99 {p99:.1f} ms above the bound {bound:g} ms"
        elif res.totals.timeouts > 0.01 * max(res.scheduled, 1):
            stop = f"{res.totals.timeouts:,} timeouts"
        elif accepted < best * FIND_MAX_RISE:
            stop = "accepted rate stopped rising"
        steps.append({"rate_per_s": rate, "accepted_per_s": accepted, "p99_ms": p99,
                      "timeouts": res.totals.timeouts, "stop_reason": stop})
        best = max(best, accepted)
        if stop:
            break
        rate *= FIND_MAX_FACTOR
    half_rate = best / 2
    half = await _phase(Phase(f"half of max {half_rate:,.0f}/s", Steady(half_rate), step_s,
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


async def _phase(phase: Phase, target: Target, view: CityView, show: bool, phases: list[PhaseResult],
                 storm: Storm | None = None) -> PhaseResult:
    gateway_pid = os.getpid() if target.platform is not None else None
    before: dict[int, procs.Sample] = {}
    memory: list[dict[str, float]] = []

    async def watch(origin_unix_s: float) -> None:
        """CPU by process from the origin on, and memory every MEMORY_EVERY_S, while the
        schedule runs."""
        await asyncio.sleep(max(0.0, origin_unix_s - time.time()))
        before.update(await asyncio.to_thread(procs.snapshot, gateway_pid))
        for k in range(int(phase.duration_s // MEMORY_EVERY_S) + 1):
            await asyncio.sleep(max(0.0, origin_unix_s + k * MEMORY_EVERY_S - time.time()))
            snap = await asyncio.to_thread(procs.snapshot, gateway_pid)
            memory.append({"t_s": k * MEMORY_EVERY_S, **procs.rss_mb_by_role(snap.values())})

    async def during(origin_unix_s: float) -> None:
        jobs = [watch(origin_unix_s)]
        if storm is not None:
            jobs.append(run_storm(storm, target, view.home_cards, origin_unix_s, phase.seed))
        await asyncio.gather(*jobs)

    res = await run_phase(phase, target.endpoint, view.terminals, view.home_cards, view.visitor_cards,
                          view.first_seq, show_live=show, during=during)
    after = await asyncio.to_thread(procs.snapshot, gateway_pid)
    cpu = procs.cpu_by_role(before, after) if before else {}
    cpu["senders (load generator)"] = res.sender_cpu_s
    res.extra = {"cpu_s": cpu, "memory_mb": memory}
    view.first_seq.update({tid: seq + 1 for tid, seq in res.last_seq.items()})
    phases.append(res)
    return res


def processes_report(phases: list[PhaseResult]) -> dict[str, Any]:
    """CPU seconds by process role over all phases, per answered tap, and memory over time."""
    cpu: dict[str, float] = {}
    for p in phases:
        for role, s in p.extra.get("cpu_s", {}).items():
            cpu[role] = cpu.get(role, 0.0) + s
    answered = sum(p.totals.answered for p in phases)
    memory: list[dict[str, float]] = []
    offset_s = 0.0
    for p in phases:
        memory += [{**m, "t_s": m["t_s"] + offset_s} for m in p.extra.get("memory_mb", [])]
        offset_s += p.phase.duration_s
    return {"cpu_s": cpu, "cpu_us_per_tap": {r: s * 1e6 / answered for r, s in cpu.items()} if answered else {},
            "cpu_us_per_tap_total": sum(cpu.values()) * 1e6 / answered if answered else 0.0,
            "memory_mb": memory,
            "note": "processes on this machine; postgres counts every postgres process here"}


# -- the run -----------------------------------------------------------------------------
async def run_loadtest(settings: Settings, services: Services, args: Namespace) -> dict[str, Any]:
    model = city_for_scale(args.scale)
    show = not args.json
    storm_needed = args.scenario == "hotlist-storm" and not args.find_max and not args.day
    if args.target:
        host, _, port = args.target.rpartition(":")
        if not host or not port.isdigit():
            raise CityCardError(f"--target must be host:port, got {args.target!r}")
        target, view = await remote_target(settings, services, host, int(port), args.api_url, args.api_token)
        if storm_needed and not (args.api_url and args.api_token):
            raise CityCardError("the hotlist storm reports losses over the card-services API: "
                                "pass --api-url and --api-token (citycard token create --role clerk)")
    else:
        target, view = await own_platform(settings, services, model, args.seed, storm_needed)
    view.terminals = pick_terminals(view.terminals, args.terminals, args.seed)
    phases: list[PhaseResult] = []
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    find_max_report = baselines = None
    storm = None
    try:
        if args.find_max:
            find_max_report = await find_max(args, target, view, show, phases)
            description = f"find-max from {args.rate:,.0f}/s, x{FIND_MAX_FACTOR} per {args.step_seconds:g} s step"
        else:
            phase, storm = scenario_phase(args, model, view.home_cards[0])
            description = _describe(phase)
            await _phase(phase, target, view, show, phases, storm)
        actor_balances = None
        if target.platform is not None:
            actor_balances = {}
            for part in await asyncio.gather(*[a.balances.remote() for a in target.platform.shards]):
                actor_balances.update(part)
    finally:
        if target.platform is not None:
            await target.platform.stop()
    conn = await db.connect(target.db_url, target.schema)
    try:
        answered = await audit_mod.check_answered(conn, [read_answered(f) for p in phases for f in p.answered_files])
        ledger = await audit_mod.run_audit(conn, actor_balances)
    finally:
        await conn.close()
    if args.baselines:
        baselines = await run_baselines(target, phases, args)
    return build_report(args, target, view, model, phases, description, started_at, answered, ledger,
                        find_max_report, baselines, storm)


async def run_baselines(target: Target, phases: list[PhaseResult], args: Namespace) -> dict[str, Any]:
    """The naive SQL ledger and the raw COPY of the same journal rows, measured right after
    the platform's run on the same machine and Postgres."""
    from ..loadtest.baselines import naive_sql_ledger, raw_copy_rate

    naive = await naive_sql_ledger(target.db_url, n_cards=100_000, n_taps=args.naive_taps,
                                   connections=args.naive_connections, time_limit_s=60.0, seed=args.seed)
    copy = await raw_copy_rate(target.db_url, target.schema, n_rows=200_000)
    platform_rate = max((accepted_in_window(p) for p in phases), default=0.0)
    return {"naive_sql_taps_per_s": naive.taps_per_s, "naive_connections": naive.connections,
            "naive_taps": naive.taps, "raw_copy_rows_per_s": copy.rows_per_s, "copy_rows": copy.rows,
            "copy_commit_rows": copy.commit_rows, "platform_taps_per_s": platform_rate,
            "ratio_to_naive": platform_rate / naive.taps_per_s if naive.taps_per_s else None,
            "share_of_copy": platform_rate / copy.rows_per_s if copy.rows_per_s else None}


def build_report(args: Namespace, target: Target, view: CityView, model: CityModel, phases: list[PhaseResult],
                 description: str, started_at: str, answered: audit_mod.AnsweredCheck, ledger: audit_mod.Audit,
                 find_max_report: dict[str, Any] | None, baselines: dict[str, Any] | None,
                 storm: Storm | None) -> dict[str, Any]:
    totals = LatencyTotals.merge([p.totals for p in phases])
    pct = totals.percentiles()
    duration_s = sum(p.phase.duration_s for p in phases)
    scheduled = sum(p.scheduled for p in phases)
    timeline: list[dict[str, Any]] = []
    offset_s = 0.0
    for p in phases:  # phases one after another on one time axis
        intervals = {s.index: s for s in merge_intervals(p.intervals)}
        for index in sorted(set(intervals) | set(p.offered)):
            snap = intervals.get(index)
            q = snap.percentiles() if snap is not None and snap.answered else None
            timeline.append({"t_s": offset_s + index, "offered": p.offered.get(index, 0),
                             "answered": snap.answered if snap else 0, "timeouts": snap.timeouts if snap else 0,
                             "p50_ms": q.p50_ms if q else 0.0, "p90_ms": q.p90_ms if q else 0.0,
                             "p99_ms": q.p99_ms if q else 0.0, "max_ms": q.max_ms if q else 0.0})
        offset_s += max((s.end_ms for s in p.intervals), default=p.phase.duration_s * 1000.0) / 1000.0
    histogram = totals.histogram()
    cdf = [[p_, histogram.get_value_at_percentile(p_) / 1000.0] for p_ in CDF_PERCENTILES] if totals.answered else []
    codes: dict[str, int] = {}
    for p in phases:
        for k, v in p.codes.items():
            codes[k] = codes.get(k, 0) + v
    errors = [e for p in phases for e in p.errors]
    replays_sent = sum(p.replays_sent for p in phases)
    replays_matched = sum(p.replays_matched for p in phases)
    charged_seen = sum(p.charged_fen for p in phases)
    audit = {**ledger.as_dict(), "answered_checked": answered.checked,
             "answered_missing_rows": answered.missing_rows, "answered_extra_rows": answered.extra_rows,
             "answered_code_mismatches": answered.code_mismatches,
             "answered_fare_mismatches": answered.fare_mismatches,
             "replays_sent": replays_sent, "replays_matched": replays_matched,
             "charged_fen_told_to_terminals": charged_seen,
             "ok": ledger.ok and answered.ok and replays_matched == replays_sent}
    accepted = max((accepted_in_window(p) for p in phases), default=0.0) if args.find_max else (
        accepted_in_window(phases[0]) if phases else 0.0)
    report: dict[str, Any] = {
        "run": {"scenario": "find-max" if args.find_max else phases[0].phase.name if phases else args.scenario,
                "target": target.description, "started_at": started_at, "duration_s": duration_s,
                "profile": description, "senders": args.senders, "terminals": len(view.terminals),
                "cards": len(view.home_cards) + len(view.visitor_cards), "city_scale": model.scale,
                "account_shards": target.account_shards, "seed": args.seed,
                "command": "citycard " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else "",
                "linger_ms": args.linger_ms, "timeout_ms": args.timeout_ms, "batch_max": args.batch},
        "totals": {"scheduled": scheduled, "answered": totals.answered, "timeouts": totals.timeouts,
                   "shed": totals.shed, "retries": totals.retries, "late_answers": totals.late_answers,
                   "unknown_answers": totals.unknown_answers, "busy_or_retry_answers": sum(p.retryable for p in phases),
                   "reconnects": sum(p.reconnects for p in phases),
                   "offered_per_s": scheduled / duration_s if duration_s else 0.0, "accepted_per_s": accepted,
                   "max_send_lag_ms": totals.max_send_lag_ms,
                   "latency_ms": {"p50": pct.p50_ms, "p90": pct.p90_ms, "p99": pct.p99_ms,
                                  "p99.9": pct.p999_ms, "max": pct.max_ms, "mean": pct.mean_ms}},
        "timeline": timeline, "cdf": cdf, "codes": dict(sorted(codes.items(), key=lambda kv: -kv[1])),
        "errors": errors, "audit": audit, "baselines": baselines, "find_max": find_max_report,
        "processes": processes_report(phases),
    }
    if storm is not None:
        report["hotlist_storm"] = {"planned": storm.count, "per_s": storm.per_s, "reported": storm.reported,
                                   "failed": storm.failed, "errors": storm.errors}
        errors += storm.errors
    report["ok"] = bool(audit["ok"] and not errors and totals.answered > 0
                        and (storm is None or storm.failed == 0))
    return report


def loadtest_main(settings: Settings, args: Namespace) -> int:
    import uvloop

    from ..loadtest.report import summary_lines, write_reports

    services = resolve_services(settings)
    try:
        report = uvloop.run(run_loadtest(settings, services, args))
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        services.stop()
    paths: tuple[Path, Path] | None = None
    if not args.no_report:
        out = Path(args.report_dir or f"loadtest-reports/{time.strftime('%Y%m%d-%H%M%S')}-{report['run']['scenario']}")
        paths = write_reports(report, out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print()
        for line in summary_lines(report):
            print(line)
        if paths:
            print(f"  report: {paths[1]} (and {paths[0].name})")
    return 0 if report["ok"] else 1


def city_seed_main(settings: Settings, scale: float, seed: int) -> int:
    """Seed a city into the configured database, for ``citycard up`` and ``loadtest --target``."""
    model = city_for_scale(scale)

    async def run(services: Services) -> int:
        await migrate_db(settings, services.db_url)
        conn = await db.connect(services.db_url, settings.database.schema)
        try:
            if await conn.fetchval("SELECT count(*) FROM terminals"):
                raise CityCardError(f"schema {settings.database.schema!r} already has terminals: "
                                    "seed into an empty database")
            terminals = await seed_model(conn, model, settings.city.account_shards, seed)
        finally:
            await conn.close()
        return len(terminals)

    services = resolve_services(settings)
    try:
        n_terminals = asyncio.run(run(services))
    finally:
        services.stop()
    print(f"seeded {model.cards + model.visitor_cards:,} cards and {n_terminals:,} terminals "
          f"(scale {scale:g}) into schema {settings.database.schema!r}")
    return 0
