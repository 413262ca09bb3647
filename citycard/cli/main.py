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


def cmd_token_create(args: argparse.Namespace) -> int:
    import asyncio

    from ..api.auth import Role, create_token
    from ..persistence import db
    from .runtime import migrate_db, resolve_services

    settings = _settings(args)
    services = resolve_services(settings)

    async def run() -> str:
        await migrate_db(settings, services.db_url)
        conn = await db.connect(services.db_url, settings.database.schema)
        try:
            return await create_token(conn, args.operator, [Role(r) for r in args.role])
        finally:
            await conn.close()

    try:
        token = asyncio.run(run())
    except ValueError as exc:
        raise CityCardError(str(exc)) from None
    finally:
        services.stop()
    print(token)
    return 0


def cmd_fares_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .fares import cmd_check

    return cmd_check(Path(args.file))


def cmd_fares_quote(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .fares import cmd_quote

    return cmd_quote(args, Path(args.table) if args.table else _settings(args).fare_table_path())


def cmd_parks_visitors(args: argparse.Namespace) -> int:
    from .fares import cmd_visitors

    return cmd_visitors(_settings(args), args.day, args.json)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _fen(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of fen: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _add_fares(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .fares import APPS, BILL_CLASSES, CATEGORIES, MODES, PRODUCTS

    fp = sub.add_parser("fares", help="fare tables: validate a table, quote a tap")
    fsub = fp.add_subparsers(dest="fares_command", required=True)
    chk = fsub.add_parser("check", help="validate a fare table file and summarise it")
    chk.add_argument("file", help="fare table TOML file")
    chk.set_defaults(func=cmd_fares_check)

    q = fsub.add_parser("quote", help="decide one tap with the tap path's rules and print it as JSON",
                        description="Decide one tap with the same code the tap path uses and print the "
                                    "decision as JSON. See docs/fares.md.")
    q.add_argument("--mode", required=True, choices=list(MODES), help="what the card is tapped on")
    q.add_argument("--route", type=_positive, help="bus or water-bus route, park id, parking lot, merchant id, "
                   "or library 1 (borrow) / 2 (return)")
    q.add_argument("--base-fen", type=_fen, help="bus / water bus: price with this base fare for --route")
    q.add_argument("--amount-fen", type=_positive, help="taxi, petrol, merchant, medical: the amount sent")
    q.add_argument("--bill-class", choices=BILL_CLASSES, help="medical bill class")
    q.add_argument("--category", choices=CATEGORIES, default="adult", help="population group (default adult)")
    q.add_argument("--product", action="append", choices=PRODUCTS,
                   help="a product valid around --at (repeatable)")
    q.add_argument("--insurance", metavar="CAT", help="health-insurance category on the card (e.g. employee)")
    q.add_argument("--medical-from-purse", action="store_true",
                   help="the holder lets other purses pay what the medical account cannot")
    q.add_argument("--no-credit", action="store_true", help="the holder is not in good credit standing")
    q.add_argument("--app", action="append", choices=list(APPS), help="an application enabled (repeatable)")
    q.add_argument("--purse", action="append", metavar="NAME=FEN",
                   help="a purse's balance (repeatable; default epurse=100000, others 0)")
    q.add_argument("--voucher-categories", metavar="A,B", help="merchant categories the vouchers may pay")
    q.add_argument("--issuer", type=_positive, help="a card of this issuer (default the table's home issuer)")
    q.add_argument("--at", metavar="ISO-TIME", help="the tap's time (default now; no offset: city time)")
    q.add_argument("--rented-at", metavar="ISO-TIME", help="bike: a rental opened at this time first")
    q.add_argument("--entered-at", metavar="ISO-TIME", help="parking: a session opened at this time first")
    q.add_argument("--rides-today", type=_fen, default=0, metavar="N",
                   help="the same ride taken N times already today (on other terminals)")
    q.add_argument("--tapped-before", type=_fen, metavar="SECONDS",
                   help="the same tap on the same terminal SECONDS earlier")
    q.add_argument("--table", metavar="FILE", help="fare table (default the configured city's)")
    q.set_defaults(func=cmd_fares_quote)

    pp = sub.add_parser("parks", help="park reports")
    psub = pp.add_subparsers(dest="parks_command", required=True)
    vis = psub.add_parser("visitors", help="admitted park entries per park per day, from the journal")
    vis.add_argument("--day", metavar="YYYY-MM-DD", help="one local day only")
    vis.add_argument("--json", action="store_true", help="print JSON")
    vis.set_defaults(func=cmd_parks_visitors)


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

    tp = sub.add_parser("token", help="operator API tokens for the card-services HTTP API")
    tsub = tp.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", help="create a token and print it (it is shown only this once)")
    tc.add_argument("--operator", required=True, help="who will use it (kept in the audit log)")
    tc.add_argument("--role", action="append", required=True,
                    choices=["clerk", "programme_admin", "auditor", "read_only"], help="a role (repeatable)")
    tc.set_defaults(func=cmd_token_create)

    _add_fares(sub)
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
