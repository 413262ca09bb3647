"""``citycard loadtest``: drive a platform with a city's traffic, open loop, then audit it
against Postgres and write a JSON and an HTML report; and ``citycard city seed``.

Against ``--target host:port`` (a platform started with ``citycard up`` on the same
configuration, whose city was seeded with ``citycard city seed``), or, without it, against a
platform of its own on the embedded defaults with a freshly seeded city. The pieces live in
``citycard/loadtest/``: scenarios, targets, measure (a phase, find-max), summary (the report).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

from ..config.settings import Settings
from ..domain.offline import IssuerKeys
from ..errors import CityCardError
from ..loadtest import audit as audit_mod
from ..loadtest.city import city_for_scale
from ..loadtest.lab import PhaseResult, TargetUnreachable, pick_terminals
from ..loadtest.measure import FIND_MAX_FACTOR, accepted_in_window, find_max, run_measured
from ..loadtest.offline_prep import LOAD_FEN, prepare_offline
from ..loadtest.offline_sender import OfflineSpec, read_columns
from ..loadtest.scenarios import SCENARIOS, describe, money_warning, scenario_phase
from ..loadtest.sender import read_answered
from ..loadtest.summary import build_report
from ..loadtest.targets import Target, own_platform, remote_target, seed_model
from ..persistence import db
from ..persistence.platform_lock import take_platform_lock
from .lifecycle import locked
from .open_files import processes_for, raise_open_files
from .services import Services, connect_app, migrate_db, resolve_services

LOADTEST_SCHEMA = "citycard_loadtest"
__all__ = ["LOADTEST_SCHEMA", "SCENARIOS", "city_seed_main", "loadtest_main"]


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
    offline = await _offline_spec(settings, target, view, args) if args.offline_rate > 0 else None
    phases: list[PhaseResult] = []
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    find_max_report = baselines = None
    storm = None
    warnings: list[str] = []
    try:
        if args.find_max:
            find_max_report = await find_max(args, target, view, show, phases)
            description = f"find-max from {args.rate:,.0f}/s, x{FIND_MAX_FACTOR} per {args.step_seconds:g} s step"
        else:
            phase, storm = scenario_phase(args, model, view.home_cards[0])
            description = describe(phase)
            warning = money_warning(phase, len(view.home_cards))
            if warning:
                warnings.append(warning)
                print(f"citycard loadtest: warning: {warning}", file=sys.stderr)
            await run_measured(phase, target, view, show, phases, storm, offline)
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
        offline_report = await _offline_audit(conn, settings, offline, phases) if offline is not None else None
    finally:
        await conn.close()
    if args.baselines:
        baselines = await run_baselines(target, phases, args)
    report = build_report(args, target, view, model, phases, description, started_at, answered, ledger,
                          find_max_report, baselines, storm, offline_report)
    report["warnings"] = warnings
    return report


async def _offline_spec(settings: Settings, target: Target, view: Any, args: Namespace) -> OfflineSpec:
    """Validators registered, offline cards loaded (offline_prep.py), and the uploader's spec."""
    conn = await db.connect(target.db_url, target.schema)
    try:
        plan = await prepare_offline(conn, view.home_cards, args.offline_cards, args.offline_terminals, args.seed)
    finally:
        await conn.close()
    c = settings.card
    rate, duration_s = float(args.offline_rate), float(args.day_seconds if args.day else args.duration)
    return OfflineSpec(
        host=target.endpoint.host, port=target.endpoint.port, master_key=target.endpoint.master_key,
        issuer=(c.issuer_mpk_hex, c.issuer_mlk_hex, c.issuer_mtk_hex),
        batch_master_key=bytes.fromhex(c.batch_master_key_hex), validators=plan.validators,
        first_batch_seq=plan.last_batch_seq, first_terminal_seq=plan.last_terminal_seq, cards=plan.cards,
        rate_per_s=rate, duration_ms=duration_s * 1000.0, max_records=int(rate * duration_s * 1.5) + 1000,
        max_batch=args.offline_batch, out_dir=tempfile.mkdtemp(prefix="citycard-offline-"), seed=args.seed,
        linger_ms=args.offline_linger_ms, replay_share=args.offline_replay_share, forged=args.offline_forged,
        timeout_ms=args.timeout_ms)


async def _offline_audit(conn: Any, settings: Settings, spec: OfflineSpec, phases: list[PhaseResult]
                         ) -> dict[str, Any]:
    """What the uploader reported, and the offline audit against Postgres."""
    up = next((p.offline for p in phases if p.offline is not None), None) or {}
    if "records_file" not in up:
        return {"spec": _spec_view(spec), "uploader": up, "audit": None, "ok": False}
    c = settings.card
    checker = audit_mod.offline_tac_checker(IssuerKeys.of_hex(c.issuer_mpk_hex, c.issuer_mlk_hex, c.issuer_mtk_hex))
    result = await audit_mod.check_offline(conn, read_columns(up["records_file"]), read_columns(up["cards_file"]),
                                           {card: bal for card, bal, _ in spec.cards}, checker)
    return {"spec": _spec_view(spec), "uploader": up, "audit": result.as_dict(), "ok": result.ok}


def _spec_view(spec: OfflineSpec) -> dict[str, Any]:
    return {"rate_per_s": spec.rate_per_s, "batch_max": spec.max_batch, "validators": len(spec.validators),
            "cards": len(spec.cards), "linger_ms": spec.linger_ms, "replay_share": spec.replay_share,
            "forged": spec.forged, "load_fen": LOAD_FEN}


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


def _fit_open_files(settings: Settings, args: Namespace) -> Settings:
    """One file per terminal in a sender and in a gateway process: enough of each for
    ``--terminals`` under this machine's open-file limit (raised to its hard limit first)."""
    limit = raise_open_files()
    needed = processes_for(args.terminals, limit)
    if needed > args.senders:
        args.senders = needed
    if not args.target and needed > settings.gateway.processes:
        print(f"citycard loadtest: {needed} gateway processes for {args.terminals:,} terminals"
              f" (open-file limit {limit:,})", file=sys.stderr)
        settings = settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"processes": needed})})
    return settings


def loadtest_main(settings: Settings, args: Namespace) -> int:
    import uvloop

    from ..loadtest.report import summary_lines, write_reports

    if not args.target and settings.metrics.port:  # its own platform serves metrics there
        from .preflight import check_port

        check_port("metrics", settings.metrics.host, settings.metrics.port, "metrics.port")
    settings = _fit_open_files(settings, args)
    services = resolve_services(settings)
    try:
        run = run_loadtest(settings, services, args)  # its own platform: one per schema, as `up`
        report = uvloop.run(run if args.target else locked(settings, services, "loadtest", run))
    except TargetUnreachable as exc:  # a failed run, not a bad argument: exit 1, one line
        print(f"citycard loadtest: FAILED: {exc}", file=sys.stderr)
        return 1
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
        if not report["ok"]:  # the JSON is for programs; the reason is for the person
            print(f"citycard loadtest: FAILED: {report.get('why_failed')}", file=sys.stderr)
    else:
        print()
        for line in summary_lines(report):
            print(line)
        if paths:
            print(f"  report: {paths[1]} (and {paths[0].name})")
    return 0 if report["ok"] else 1


def city_seed_main(settings: Settings, scale: float, seed: int, replace: bool = False) -> int:
    """Seed a city into the configured database, for ``citycard up`` and ``loadtest --target``:
    refused while a platform runs on the schema (its shards would never see the new cards), and
    into a schema that has cards or terminals unless ``replace`` (drop the schema's data first)."""
    model = city_for_scale(scale)
    schema = settings.database.schema

    async def run(services: Services) -> int:
        # held while seeding, so no platform starts on a half-seeded schema either
        lock = await take_platform_lock(settings, services.db_url, "city seed", state_file=bool(services.embedded))
        try:
            if replace:
                await db.drop_schema(services.db_url, schema)
            await migrate_db(settings, services.db_url)
            conn = await connect_app(settings, services)
            try:
                cards, terminals = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM cards), (SELECT count(*) FROM terminals)")
                if cards or terminals:
                    raise CityCardError(f"schema {schema!r} already has {cards:,} cards and {terminals:,} terminals:"
                                        " seed an empty schema, or pass --replace to drop them and seed anew")
                planned = await seed_model(conn, model, settings.city.account_shards, seed)
            finally:
                await conn.close()
        finally:
            await lock.release()
        return len(planned)

    services = resolve_services(settings)
    try:
        n_terminals = asyncio.run(run(services))
    finally:
        services.stop()
    print(f"seeded {model.cards + model.visitor_cards:,} cards and {n_terminals:,} terminals "
          f"(scale {scale:g}) into schema {settings.database.schema!r}")
    return 0
