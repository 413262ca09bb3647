"""The ``citycard`` command."""

import argparse
import logging
import sys

from ..config.settings import Settings, load_settings
from ..errors import CityCardError


def _settings(args: argparse.Namespace, **overrides: dict[str, object]) -> Settings:
    return load_settings(args.config, overrides=overrides or None)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_SCHEMA, demo_main

    for name in ("taps", "cards", "terminals", "batch", "window"):
        if getattr(args, name) < 1:
            raise CityCardError(f"--{name} must be at least 1")
    if args.batch > 1000:
        raise CityCardError("--batch must be at most 1000 (the protocol's batch limit)")

    settings = _settings(args, database={"schema": DEMO_SCHEMA}, redis={"prefix": DEMO_SCHEMA})
    return demo_main(settings, n_taps=args.taps, n_cards=args.cards, n_terminals=args.terminals,
                     batch_taps=args.batch, window=args.window, as_json=args.json)


def cmd_up(args: argparse.Namespace) -> int:
    from .up import up_main

    return up_main(_settings(args))


def cmd_db_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from .runtime import migrate_db, resolve_services

    settings = _settings(args)
    services = resolve_services(settings)
    try:
        applied = asyncio.run(migrate_db(settings, services.db_url))
    finally:
        services.stop()
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="citycard", description="City citizen-card transaction platform")
    p.add_argument("--config", help="TOML file overriding the defaults (or set CITYCARD_CONFIG)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="bring everything up on the embedded defaults and drive a synthetic city")
    d.add_argument("--taps", type=int, default=200_000, help="taps to send (default 200,000)")
    d.add_argument("--cards", type=int, default=100_000, help="cardholders to seed (default 100,000)")
    d.add_argument("--terminals", type=int, default=64, help="terminals to connect (default 64)")
    d.add_argument("--batch", type=int, default=50, help="taps per request a terminal sends (default 50)")
    d.add_argument("--window", type=int, default=2, help="requests a terminal keeps outstanding (default 2)")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=cmd_demo)

    u = sub.add_parser("up", help="run the platform until interrupted")
    u.set_defaults(func=cmd_up)

    dbp = sub.add_parser("db", help="database tasks")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    mig = dbsub.add_parser("migrate", help="apply pending migrations")
    mig.set_defaults(func=cmd_db_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except CityCardError as exc:
        print(f"citycard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
