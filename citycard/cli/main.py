"""The ``citycard`` command."""

import argparse
import logging
import sys
from pathlib import Path

from .. import __version__
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


def cmd_loadtest(args: argparse.Namespace) -> int:
    from .loadtest import LOADTEST_SCHEMA, loadtest_main

    for name in ("rate", "duration", "terminals", "senders", "batch", "day_seconds", "step_seconds"):
        if getattr(args, name) <= 0:
            raise CityCardError(f"--{name.replace('_', '-')} must be > 0")
    if args.batch > 1000:
        raise CityCardError("--batch must be at most 1000 (the protocol's batch limit)")
    if not 0 < args.scale <= 10:
        raise CityCardError("--scale must be in (0, 10]: 1 is a megacity of 10 M cards")
    if args.linger_ms < 0 or args.timeout_ms <= 0 or not 0 <= args.replay_share <= 1:
        raise CityCardError("--linger-ms must be >= 0, --timeout-ms > 0, --replay-share in [0, 1]")
    _check_offline_args(args)
    if args.target:
        host, _, port = args.target.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CityCardError(f"--target must be host:port, got {args.target!r}")
        settings = _settings(args)
    else:  # its own platform, in its own schema, dropped and re-seeded each run
        schema = args.schema or LOADTEST_SCHEMA
        settings = _settings(args, database={"schema": schema}, redis={"prefix": schema})
    return loadtest_main(settings, args)


def _check_offline_args(args: argparse.Namespace) -> None:
    if args.offline_rate < 0:
        raise CityCardError("--offline-rate must be >= 0 (0: no offline uploads)")
    if not 1 <= args.offline_batch <= 1000:
        raise CityCardError("--offline-batch must be 1..1000 (the protocol's limit)")
    if not 1 <= args.offline_terminals <= 10_000 or args.offline_cards < 1:
        raise CityCardError("--offline-terminals must be 1..10,000 and --offline-cards >= 1")
    if args.offline_forged < 0 or args.offline_linger_ms < 0 or not 0 <= args.offline_replay_share <= 1:
        raise CityCardError("--offline-forged and --offline-linger-ms must be >= 0, --offline-replay-share in [0, 1]")
    if args.offline_rate > 0 and args.find_max:
        raise CityCardError("--offline-rate does not go with --find-max: measure offline uploads in a scenario run")
    if args.offline_forged and not args.offline_rate:
        raise CityCardError("--offline-forged needs --offline-rate")


def cmd_city_seed(args: argparse.Namespace) -> int:
    from .loadtest import city_seed_main

    if not 0 < args.scale <= 10:
        raise CityCardError("--scale must be in (0, 10]: 1 is a megacity of 10 M cards")
    return city_seed_main(_settings(args), args.scale, args.seed, replace=args.replace)


def cmd_up(args: argparse.Namespace) -> int:
    from .up import up_main

    return up_main(_settings(args), attach=args.attach)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from .services import migrate_db, resolve_services

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
    from .services import connect_app, migrate_db, resolve_services

    settings = _settings(args)
    services = resolve_services(settings)

    async def run() -> str:
        await migrate_db(settings, services.db_url)
        conn = await connect_app(settings, services)
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


def cmd_token_list(args: argparse.Namespace) -> int:
    from .tokens import list_main

    return list_main(_settings(args))


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from .tokens import revoke_main

    return revoke_main(_settings(args), args.token_id, args.reason)


def _tap_kind(text: str) -> int:
    from ..domain.taps import TapKind

    try:
        return int(TapKind[text.upper().replace("-", "_")])
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"a kind is one of {', '.join(k.name.lower() for k in TapKind)}; got {text!r}") from None


def cmd_terminal(args: argparse.Namespace) -> int:
    from .terminals import terminal_main

    return terminal_main(_settings(args), args.terminal_command, args.terminal_id, getattr(args, "reason", ""),
                         getattr(args, "exact", False), int(getattr(args, "kind", 0) or 0), getattr(args, "route", 0),
                         getattr(args, "name", ""), getattr(args, "key_file", None), getattr(args, "force", False))


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


def _terminal_id(text: str) -> int:
    value = _positive(text)
    if value > 2**31 - 1:  # the protocol's and the terminals table's range
        raise argparse.ArgumentTypeError(f"must be at most {2**31 - 1}: {text!r}")
    return value


def _token_id(text: str) -> str:
    value = text.strip().lower()
    if not 4 <= len(value) <= 64 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"a token id is 4 to 64 hex digits: {text!r}")
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


def _add_loadtest(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .loadtest import LOADTEST_SCHEMA as LOADTEST_SCHEMA_NAME
    from .loadtest import SCENARIOS

    lt = sub.add_parser(
        "loadtest", help="drive the platform with a city's traffic, open loop; audit; JSON + HTML report",
        description="Open-loop load from many virtual terminals over the real protocol. Latency runs from "
                    "each tap's intended send time. Ends with an audit against Postgres and a report. "
                    "Without --target it brings up its own platform on the embedded defaults.")
    lt.add_argument("--target", metavar="HOST:PORT", help="a gateway started with 'citycard up' on the same "
                    "--config (its city seeded with 'citycard city seed'); default: a platform of its own")
    lt.add_argument("--scenario", choices=SCENARIOS, default="steady", help="traffic shape (default steady)")
    lt.add_argument("--day", action="store_true", help="replay a whole city day, compressed into --day-seconds")
    lt.add_argument("--find-max", action="store_true", help="raise the rate step by step until the accepted "
                    "rate stops rising or p99 passes --p99-bound-ms; then measure at half the maximum")
    lt.add_argument("--rate", type=float, default=5000.0, help="offered taps/s (peak of ramp/spike; the "
                    "first step of --find-max); default 5,000")
    lt.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    lt.add_argument("--max-taps", type=int, default=0, help="stop after this many taps (default: 1.5x rate x duration)")
    lt.add_argument("--scale", type=float, default=0.01, help="city size: 1 = 10 M cards, 20 M taps a day "
                    "(default 0.01); own platform only")
    lt.add_argument("--terminals", type=int, default=200, help="virtual terminals, one connection each (default 200)")
    lt.add_argument("--senders", type=int, default=2, help="sender processes (default 2)")
    lt.add_argument("--linger-ms", type=float, default=5.0, help="a terminal waits this long to batch taps due "
                    "together (default 5)")
    lt.add_argument("--batch", type=int, default=200, help="most taps in one batch (default 200)")
    lt.add_argument("--timeout-ms", type=float, default=10_000.0, help="a tap unanswered this long after its "
                    "intended time is a timeout (default 10,000)")
    lt.add_argument("--replay-share", type=float, default=0.01, help="share of answered batches sent again with "
                    "the same seqs, which must come back as replays (default 0.01)")
    lt.add_argument("--p99-bound-ms", type=float, default=50.0, help="--find-max stops above this p99 (default 50)")
    lt.add_argument("--step-seconds", type=float, default=10.0, help="--find-max seconds per step (default 10)")
    lt.add_argument("--day-seconds", type=float, default=120.0, help="--day: the day replayed in this many "
                    "seconds (default 120)")
    lt.add_argument("--hot-share", type=float, default=0.2, help="hot-card: share of taps on the hot card")
    lt.add_argument("--visitor-share", type=float, default=0.3, help="regional: share of taps by other "
                    "issuers' cards")
    lt.add_argument("--storm-rate", type=float, default=20.0, help="hotlist-storm: loss reports per second")
    lt.add_argument("--api-url", help="with --target: the card-services API, for the hotlist storm")
    lt.add_argument("--api-token", help="with --target: a clerk's API token, for the hotlist storm")
    lt.add_argument("--baselines", action="store_true", help="also measure a naive SQL ledger and the raw COPY "
                    "rate of the same rows, after the load, on the same Postgres")
    lt.add_argument("--naive-taps", type=int, default=30_000, help="taps for the naive baseline (default 30,000)")
    lt.add_argument("--naive-connections", type=int, default=8, help="connections for the naive baseline (default 8)")
    lt.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    lt.add_argument("--offline-rate", type=float, default=0.0, help="offline (city-pass) records/s uploaded by "
                    "validators alongside the taps, in signed batches (default 0: none)")
    lt.add_argument("--offline-batch", type=int, default=500, help="records per offline upload (default 500, "
                    "a validator's --upload-batch)")
    lt.add_argument("--offline-terminals", type=int, default=8, help="validators uploading (default 8)")
    lt.add_argument("--offline-cards", type=int, default=10_000, help="cards riding offline (default 10,000)")
    lt.add_argument("--offline-linger-ms", type=float, default=1000.0, help="a validator uploads a batch not full "
                    "after its oldest record waited this long (default 1,000)")
    lt.add_argument("--offline-replay-share", type=float, default=0.02, help="share of acked offline batches sent "
                    "again unchanged, as after a lost ack (default 0.02)")
    lt.add_argument("--offline-forged", type=int, default=0, help="forged records (bad TAC) among the uploads: each "
                    "must come back BAD_TAC and hotlist its card (default 0)")
    lt.add_argument("--schema", help=f"own platform: the Postgres schema it drops and re-seeds each run "
                    f"(default {LOADTEST_SCHEMA_NAME})")
    lt.add_argument("--report-dir", help="where report.json and report.html go (default loadtest-reports/<time>-<scenario>)")
    lt.add_argument("--no-report", action="store_true", help="write no report files")
    lt.add_argument("--json", action="store_true", help="print the report as JSON")
    lt.set_defaults(func=cmd_loadtest)

    cp = sub.add_parser("city", help="synthetic cities for the load lab")
    csub = cp.add_subparsers(dest="city_command", required=True)
    cs = csub.add_parser("seed", help="seed a city (cards, terminals) into the configured, empty database")
    cs.add_argument("--scale", type=float, default=0.01, help="1 = 10 M cards (default 0.01)")
    cs.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    cs.add_argument("--replace", action="store_true", help="the schema already has cards or terminals: drop "
                    "the schema's data and seed anew (refused while a platform runs on it)")
    cs.set_defaults(func=cmd_city_seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="citycard", description="City citizen-card transaction platform")
    p.add_argument("--config", help="TOML file overriding the defaults (or set CITYCARD_CONFIG)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="bring everything up on the embedded defaults and drive a synthetic city")
    d.add_argument("--taps", type=int, default=200_000, help="taps to send (default 200,000)")
    d.add_argument("--cards", type=int, default=100_000, help="cardholders to seed (default 100,000)")
    d.add_argument("--terminals", type=int, default=64, help="terminals to connect (default 64)")
    d.add_argument("--batch", type=int, default=50, help="taps per request a terminal sends (default 50)")
    d.add_argument("--window", type=int, default=2, help="requests a terminal keeps outstanding (default 2)")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=cmd_demo)

    _add_loadtest(sub)

    from .settings_help import settings_epilog

    u = sub.add_parser("up", help="run the platform until interrupted", epilog=settings_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("--attach", action="store_true",
                   help="another gateway for a platform already up on the Ray cluster at ray.address: it uses"
                        " that platform's shards and runs no migrations (docs/deploy.md)")
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
                    choices=["clerk", "programme_admin", "auditor", "read_only", "payment", "merchant_desk"], help="a role (repeatable)")
    tc.set_defaults(func=cmd_token_create)
    tl = tsub.add_parser("list", help="every token: id, operator, roles, created, revoked")
    tl.set_defaults(func=cmd_token_list)
    tr = tsub.add_parser("revoke", help="revoke a token by its id (or the start of it); the API refuses it from then on")
    tr.add_argument("token_id", metavar="TOKEN_ID", type=_token_id, help="as `citycard token list` shows it")
    tr.add_argument("--reason", default="", metavar="TEXT", help="why (kept in the audit log)")
    tr.set_defaults(func=cmd_token_revoke)

    trm = sub.add_parser("terminal", help="disable, enable or show one terminal")
    trsub = trm.add_subparsers(dest="terminal_command", required=True)
    reg = trsub.add_parser("register", help="register a new terminal, so it may authenticate (audit-logged)")
    reg.add_argument("terminal_id", metavar="TERMINAL_ID", type=_terminal_id, help="the terminal's id")
    reg.add_argument("--kind", required=True, type=_tap_kind, help="what it is: bus, water_bus, merchant, ... ")
    reg.add_argument("--route", type=int, default=0, help="its route, pier, merchant or park (default 0)")
    reg.add_argument("--name", default="", help="a name for operators")
    reg.add_argument("--reason", default="", metavar="TEXT", help="why (kept in the audit log)")
    reg.add_argument("--key-file", type=Path, metavar="PATH",
                     help="write the terminal's key there (64 hex digits, mode 0600) to install in it")
    reg.add_argument("--force", action="store_true", help="replace an existing --key-file")
    reg.set_defaults(func=cmd_terminal)
    for name, help_text in (
        ("disable", "refuse the terminal from now on and close its open connections on every gateway"),
        ("enable", "let a disabled terminal authenticate again"),
        ("show", "print the terminal's flag and totals from the database"),
    ):
        tcmd = trsub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        tcmd.add_argument("terminal_id", metavar="TERMINAL_ID", type=_terminal_id, help="the terminal's id")
        if name != "show":
            tcmd.add_argument("--reason", default="", metavar="TEXT", help="why (kept in the audit log)")
        else:
            tcmd.add_argument("--exact", action="store_true",
                              help="also count its taps and fen charged from the journal (exact; scans the journal)")
        tcmd.set_defaults(func=cmd_terminal)

    _add_fares(sub)
    from .readers import add_parser as add_readers

    add_readers(sub)
    from .validator import add_parser as add_validator

    add_validator(sub)
    from .counter import add_parser as add_counter

    add_counter(sub)
    from .card import add_parser as add_card

    add_card(sub)
    from .settle import add_parser as add_settle

    add_settle(sub)
    from .clearing import add_parser as add_clearing

    add_clearing(sub)
    from .region import add_parser as add_region

    add_region(sub)
    from .status import add_parser as add_status

    add_status(sub)
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
