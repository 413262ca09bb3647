"""``citycard demo``: the whole platform on the embedded defaults, a synthetic city, taps
through the real TCP protocol, and a money audit read back from Postgres."""

import asyncio
import json
import multiprocessing
import sys
import time
from typing import Any

from tqdm import tqdm

from ..config.settings import Settings
from ..domain.money import format_yuan
from ..loadtest import audit as audit_mod
from ..loadtest.city import plan_cards, plan_terminals, seed_city
from ..loadtest.drive import DriveResult, DriveSpec, drive_in_process
from ..persistence import db
from .lifecycle import locked
from .runtime import Platform
from .services import Services, connect_app, migrate_db, resolve_services

DEMO_SCHEMA = "citycard_demo"


async def run_demo(settings: Settings, services: Services, *, n_taps: int, n_cards: int,
                   n_terminals: int, show_progress: bool, batch_taps: int = 50,
                   window: int = 2) -> dict[str, Any]:
    schema = settings.database.schema
    await db.drop_schema(services.db_url, schema)
    await migrate_db(settings, services.db_url)
    conn = await connect_app(settings, services)
    try:
        terminals = plan_terminals(n_terminals, seed=1)
        await seed_city(conn, plan_cards(n_cards, settings.city.account_shards, seed=1), terminals)
    finally:
        await conn.close()

    platform = Platform(settings, services)
    t0 = time.perf_counter()
    await platform.start(gateway_port=0, metrics_port=0, api_port=-1)
    startup_s = time.perf_counter() - t0
    try:
        spec = DriveSpec("127.0.0.1", platform.gateway_port, settings.city.master_key, terminals,
                         n_cards, n_taps, batch_taps=batch_taps, window=window)
        load = await _drive_child(spec, show_progress)
        await asyncio.sleep(0)  # let the last session reports go out
        actor_balances: dict[int, int] = {}
        for part in await asyncio.gather(*[a.balances.remote() for a in platform.shards]):
            actor_balances.update(part)
        conn = await connect_app(settings, services)
        try:
            audit = await audit_mod.run_audit(conn, actor_balances)
        finally:
            await conn.close()
    finally:
        await platform.stop()
    return _summary(settings, load, audit, startup_s, n_cards, n_terminals)


async def _drive_child(spec: DriveSpec, show_progress: bool) -> DriveResult:
    """The terminals run in their own process so they do not share a core's loop with the gateway."""
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("q", 0)
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_drive_entry, args=(spec, counter, sender), daemon=True)
    proc.start()
    sender.close()
    bar = tqdm(total=spec.n_taps, unit="tap", disable=not show_progress, file=sys.stderr,
               desc="taps", smoothing=0.1)
    try:
        while proc.is_alive() and not receiver.poll():
            await asyncio.sleep(0.2)
            bar.update(counter.value - bar.n)
        bar.update(counter.value - bar.n)
    finally:
        bar.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = RuntimeError(f"load driver process died (exit code {proc.exitcode})")
    proc.join(timeout=10)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _drive_entry(spec: DriveSpec, counter: Any, sender: Any) -> None:
    try:
        sender.send(drive_in_process(spec, counter))
    except BaseException as exc:  # noqa: BLE001 - report to the parent, whatever it was
        sender.send(RuntimeError(f"load driver failed: {exc!r}"))


def _summary(settings: Settings, load: DriveResult, audit: audit_mod.Audit, startup_s: float,
             n_cards: int, n_terminals: int) -> dict[str, Any]:
    rate = load.first_answers / load.elapsed_s if load.elapsed_s else 0.0
    return {
        "city": settings.city.name,
        "cards": n_cards,
        "terminals": n_terminals,
        "account_shards": settings.city.account_shards,
        "startup_s": round(startup_s, 2),
        "taps_sent": load.taps_sent,
        "taps_answered": load.first_answers,
        "elapsed_s": round(load.elapsed_s, 3),
        "durable_taps_per_s": round(rate, 1),
        "latency_ms": {k: round(v, 3) for k, v in load.latency_ms.items()},
        "results": dict(load.by_code.most_common()),
        "retries": {"sent": load.replays_sent, "answered_with_first_outcome": load.replays_matched},
        "charged_fen_seen_by_terminals": load.charged_fen,
        "errors": load.errors,
        "timed_out": load.timed_out,
        "audit": audit.as_dict(),
        "ok": audit.ok and not load.errors and not load.timed_out
              and load.replays_matched == load.replays_sent
              and load.charged_fen == audit.charged_fen,
    }


def print_summary(s: dict[str, Any]) -> None:
    a = s["audit"]
    lat = s["latency_ms"]
    print()
    print(f"citycard demo: {s['city']}, {s['cards']:,} cards, {s['terminals']} terminals, "
          f"{s['account_shards']} account shards (platform up in {s['startup_s']} s)")
    print(f"  {s['taps_answered']:,} taps answered durably in {s['elapsed_s']:.2f} s: "
          f"{s['durable_taps_per_s']:,.0f} taps/s")
    if lat:
        print("  latency, send to durable answer (ms): " + "  ".join(f"{k} {v:.2f}" for k, v in lat.items()))
    print("  results: " + ", ".join(f"{k} {v:,}" for k, v in s["results"].items()))
    r = s["retries"]
    print(f"  retried taps: {r['sent']:,} sent again, {r['answered_with_first_outcome']:,} answered "
          "with their first outcome (never charged twice)")
    mark = "balanced to the fen" if a["balanced"] else "DOES NOT BALANCE"
    print(f"  money audit (Postgres): opening {format_yuan(a['opening_fen'])} = balances "
          f"{format_yuan(a['balances_fen'])} + charged {format_yuan(a['charged_fen'])} yuan: {mark}")
    print(f"  journal: {a['journal_rows']:,} rows, duplicate (terminal, seq): {a['duplicate_seqs']}, "
          f"cards whose actor balance differs from Postgres: {a['actor_mismatches']}")
    print(f"  terminals saw {format_yuan(s['charged_fen_seen_by_terminals'])} yuan charged; "
          f"journal holds {format_yuan(a['charged_fen'])}")
    if s["errors"]:
        print(f"  errors: {s['errors'][:5]}")
    print("  OK" if s["ok"] else "  FAILED")


def demo_main(settings: Settings, *, n_taps: int, n_cards: int, n_terminals: int, as_json: bool,
              batch_taps: int = 50, window: int = 2) -> int:
    import uvloop

    services = resolve_services(settings)
    try:
        summary = uvloop.run(locked(settings, services, "demo", run_demo(
            settings, services, n_taps=n_taps, n_cards=n_cards, n_terminals=n_terminals,
            show_progress=not as_json, batch_taps=batch_taps, window=window)))
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        services.stop()
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0 if summary["ok"] else 1


