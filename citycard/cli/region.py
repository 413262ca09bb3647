"""``citycard region lab``: N cities on this machine, cross-city traffic, an outage, settlement,
clearing and an audit; JSON and HTML report (docs/interop.md, "The region lab")."""

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.settings import Settings, load_settings
from ..errors import CityCardError

if TYPE_CHECKING:
    from ..cli.services import Services
    from ..region.findmax import FindMaxSpec
    from ..region.lab import LabSpec


def cmd_region_lab(args: argparse.Namespace) -> int:
    from ..region.lab import LabSpec

    if args.find_max:
        return _cmd_find_max(args)

    spec = LabSpec(cities=args.cities, cards=args.cards, terminals=args.terminals or LabSpec.terminals,
                   account_shards=args.account_shards,
                   duration_s=args.duration_s, taps_per_s=args.taps_per_s, visitor_share=args.visitor_share,
                   floor_limit_fen=args.floor_limit_fen, schema_prefix=args.schema_prefix,
                   down_city=args.down_city, offline_per_s=args.offline_per_s, forged_share=args.forged_share,
                   net_debit_cap_fen=args.net_debit_cap_fen)
    try:
        spec.check()
    except ValueError as exc:
        raise CityCardError(str(exc)) from None
    overrides: dict[str, dict[str, object]] = {}
    if args.db_url:
        overrides["database"] = {"url": args.db_url}
    settings = load_settings(args.config, overrides=overrides or None)
    return region_lab_main(settings, spec, as_json=args.json, report_dir=args.report_dir)


def _cmd_find_max(args: argparse.Namespace) -> int:
    from ..region.findmax import FindMaxSpec

    spec = FindMaxSpec(cities=args.cities, cards=args.cards, terminals=args.terminals or FindMaxSpec.terminals,
                       account_shards=args.account_shards, visitor_share=args.visitor_share,
                       floor_limit_fen=args.floor_limit_fen, schema_prefix=args.schema_prefix,
                       start_rate=args.start_rate, max_steps=args.max_steps, step_s=args.step_s,
                       half_s=args.half_s, p99_bound_ms=args.p99_bound_ms, retries=args.step_retries)
    try:
        spec.check()
    except ValueError as exc:
        raise CityCardError(str(exc)) from None
    overrides: dict[str, dict[str, object]] = {"database": {"url": args.db_url}} if args.db_url else {}
    return find_max_main(load_settings(args.config, overrides=overrides or None), spec, as_json=args.json,
                         report_dir=args.report_dir)


Run = Callable[["Services", Path, Callable[[str], None]], Awaitable[dict[str, Any]]]


def _run_lab(settings: Settings, as_json: bool, run: Run) -> dict[str, Any]:
    """Services and Ray up, ``run`` on uvloop with a key directory of its own, everything down
    again; progress on stderr (and Ray's chatter kept off stdout) when the JSON goes there."""
    import uvloop

    from ..cli.services import resolve_services

    services = resolve_services(settings)
    if as_json:  # Ray prints its workers' logs on stdout: they would break the JSON
        _init_ray_quiet(settings)

    def progress(msg: str) -> None:
        if not as_json:
            print(f"  {msg}", file=sys.stderr, flush=True)

    with _stdout_to_stderr(as_json):
        try:
            with tempfile.TemporaryDirectory(prefix="citycard-region-keys-") as key_dir:
                return uvloop.run(run(services, Path(key_dir), progress))
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            services.stop()


def region_lab_main(settings: Settings, spec: "LabSpec", *, as_json: bool, report_dir: str | None) -> int:
    from ..region.lab import run_lab
    from ..region.report import summary_lines, write_reports

    report = _run_lab(settings, as_json, lambda services, key_dir, progress: run_lab(
        settings, services, spec, key_dir, progress))
    out = Path(report_dir or f"region-reports/{time.strftime('%Y%m%d-%H%M%S')}-{spec.cities}-cities")
    json_path, html_path = write_reports(report, out)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(summary_lines(report)))
        print(f"  report: {json_path} and {html_path}")
    return 0 if report["ok"] else 1


def find_max_main(settings: Settings, spec: "FindMaxSpec", *, as_json: bool, report_dir: str | None) -> int:
    """``region lab --find-max``: report.json in ``report_dir``, a summary (or the JSON) on stdout."""
    from ..region.findmax import run_find_max, summary_lines

    report = _run_lab(settings, as_json, lambda services, key_dir, progress: run_find_max(
        settings, services, spec, key_dir, progress))
    out = Path(report_dir or f"region-reports/{time.strftime('%Y%m%d-%H%M%S')}-{spec.cities}-cities-find-max")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(summary_lines(report)))
        print(f"  report: {out / 'report.json'}")
    return 0 if report["ok"] else 1


@contextmanager
def _stdout_to_stderr(on: bool) -> Iterator[None]:
    """With --json, stdout is the report's alone: what Ray's threads print meanwhile goes to stderr."""
    if not on:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _init_ray_quiet(settings: Settings) -> None:
    """runtime.init_ray, but without the workers' logs on the driver's stdout."""
    import logging

    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, object] = {"namespace": settings.ray.namespace, "logging_level": logging.WARNING,
                                 "log_to_driver": False}
    if settings.ray.on_cluster:  # a cluster: its token, one line when it is not there
        from .ray_cluster import connect_cluster

        connect_cluster(settings.ray, kwargs)
        return
    kwargs["num_cpus"] = settings.ray.num_cpus or os.cpu_count() or 1
    kwargs["include_dashboard"] = False
    ray.init(address=None, **kwargs)  # type: ignore[arg-type]


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    rp = sub.add_parser("region", help="the region of many cities (docs/interop.md)")
    rsub = rp.add_subparsers(dest="region_command", required=True)
    lab = rsub.add_parser("lab", help="N cities on this machine: own and visitors' taps, one city's link down and"
                          " back, settlement, clearing, audit; JSON + HTML report. Exit 1 if an audit fails")
    lab.add_argument("--cities", type=int, default=10, help="how many cities, 2..99 (default 10)")
    lab.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    lab.add_argument("--report-dir", help="where report.json and report.html go"
                     " (default region-reports/<time>-<N>-cities)")
    lab.add_argument("--duration-s", type=float, default=30.0, help="seconds of traffic (default 30)")
    lab.add_argument("--visitor-share", type=float, default=0.2,
                     help="share of each city's taps made with other cities' cards (default 0.2)")
    lab.add_argument("--taps-per-s", type=float, default=15.0, help="taps a second per city (default 15)")
    lab.add_argument("--cards", type=int, default=2000, help="cards per city (default 2000)")
    lab.add_argument("--terminals", type=int, help="bus validators per city (default 3; 8 with --find-max)")
    lab.add_argument("--account-shards", type=int, choices=(1, 2), default=1, help="account shards per city")
    lab.add_argument("--floor-limit-fen", type=int, default=2000,
                     help="stand-in floor limit per card and window, every issuer (default 2000)")
    lab.add_argument("--offline-per-s", type=float, default=3.0,
                     help="offline visitor records (city-pass, another city's card) a second per city (default 3; 0: none)")
    lab.add_argument("--forged-share", type=float, default=0.05,
                     help="of the offline visitor records, forged ones (bad TAC; at least one a city; default 0.05)")
    lab.add_argument("--down-city", type=int, default=2,
                     help="which city is stopped whole mid-run and restarted (1-based)")
    lab.add_argument("--net-debit-cap-fen", type=int, default=0,
                     help="every city's net debit cap at the clearing house (default 0: every net debtor is"
                          " suspended when the window closes, until settled)")
    lab.add_argument("--schema-prefix", default="region_lab",
                     help="Postgres schemas <prefix>_c01.. (dropped and made again at the start)")
    lab.add_argument("--db-url", help="the machine's Postgres (default: settings, else the embedded one)")
    fm = lab.add_argument_group("find-max (no outage, no clearing: the cross-city p99 at half the max)")
    fm.add_argument("--find-max", action="store_true", help="step the taps a second per city up until the"
                    " cross-city p99 passes --p99-bound-ms or taps fail, then run at half the max")
    fm.add_argument("--p99-bound-ms", type=float, default=100.0, help="cross-city p99 bound (default 100)")
    fm.add_argument("--start-rate", type=float, default=5.0, help="taps a second per city, first step (default 5)")
    fm.add_argument("--max-steps", type=int, default=10, help="at most this many steps, x1.3 each (default 10)")
    fm.add_argument("--step-s", type=float, default=15.0, help="seconds of traffic per step (default 15)")
    fm.add_argument("--step-retries", type=int, default=1, help="a step past the bound is run again this"
                    " often before the search stops (default 1: one stall of a shared machine is not the max)")
    fm.add_argument("--half-s", type=float, default=30.0, help="seconds of traffic at half the max (default 30)")
    lab.set_defaults(func=cmd_region_lab)


__all__ = ["add_parser", "region_lab_main"]
