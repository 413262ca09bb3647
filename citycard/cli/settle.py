"""``citycard settle ...``: settlement inside the city (docs/settlement.md).

counterparty add, attach terminals, close a window (lines, discrepancies, files), show it,
and its bus-subsidy basis;
and the city's side of regional clearing: export or send a window's clearing files. Bad input: a one-line error and exit code 2 (main.py's handler).
"""

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import asyncpg

from ..config.fare_table import load_fare_tables
from ..config.settings import Settings, load_settings
from ..domain.settlement import SettleCode, window_bounds
from ..domain.tables import FareTables
from ..errors import CityCardError
from ..persistence import settlement as store
from ..persistence.settlement_export import load_or_make_key, public_hex, write_delivery
from .services import connect_app, migrate_db, resolve_services
from .settle_clearing import KEY_FILE, clearing_action, import_action

_REFUSED = {
    SettleCode.SETTLED_REFUSED: "is settled: its lines are final, closing is refused",
    SettleCode.NOT_ENDED: "has not ended yet (a close waits until a minute after its end)",
    SettleCode.UNKNOWN_WINDOW: "is not known",
}


def _bp(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"basis points are a whole number 0..10000; got {text!r}") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"basis points are 0..10000 (10000 = 100 %); got {value}")
    return value


def _terminal(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a terminal id is a whole number; got {text!r}") from None
    if not 0 < value < 2**63:
        raise argparse.ArgumentTypeError(f"a terminal id is positive; got {value}")
    return value


def _window(text: str) -> str:
    try:
        window_bounds(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sp = sub.add_parser("settle", help="settlement inside the city: counterparties, windows, files, subsidy basis",
                        description="Settlement inside the city (docs/settlement.md).")
    ssub = sp.add_subparsers(dest="settle_command", required=True)
    cp = ssub.add_parser("counterparty", help="register who the card system pays")
    cpsub = cp.add_subparsers(dest="counterparty_command", required=True)
    add = cpsub.add_parser("add", help="register an operator or a merchant with its commission")
    add.add_argument("counterparty_id", metavar="ID", help="1..40 of a-z 0-9 _ -")
    add.add_argument("--kind", choices=["operator", "merchant"], required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--commission-bp", type=_bp, required=True, help="the card system's commission, basis points")
    add.set_defaults(func=_cmd, action="add")
    at = ssub.add_parser("attach", help="attach terminals to a counterparty (their taps are owed to it)")
    at.add_argument("counterparty_id", metavar="ID")
    at.add_argument("--terminal", type=_terminal, action="append", required=True, metavar="T")
    at.set_defaults(func=_cmd, action="attach")
    for name, help_text in (("close", "close a window (a local day): lines, discrepancies, subsidy basis"),
                            ("show", "print a window's lines and discrepancies"),
                            ("subsidy", "print a closed window's bus-subsidy basis"),
                            ("mark-settled", "mark a closed window paid: its lines are final from then on")):
        w = ssub.add_parser(name, help=help_text)
        w.add_argument("--window", type=_window, required=True, metavar="YYYY-MM-DD")
        w.add_argument("--json", action="store_true", help="print JSON")
        if name == "close":
            w.add_argument("--out", type=Path, metavar="DIR", help="write <DIR>/<window>/<counterparty>.csv,"
                           " manifest.json and manifest.sig")
            w.add_argument("--key-file", type=Path, metavar="PEM", help=f"the city's Ed25519 signing key"
                           f" (default: {KEY_FILE} in the state dir, made on first use)")
        w.set_defaults(func=_cmd, action=name)
    for name, help_text in (("export-clearing", "write the window's clearing files (other issuers' cards) for the"
                             " regional clearing house"),
                            ("send-clearing", "deliver the window's clearing files to the clearing house"),
                            ("import-clearing", "book the clearing house's closed report of the window into this"
                             " city's tables (statement, chargebacks, discrepancies); idempotent")):
        c = ssub.add_parser(name, help=help_text)
        c.add_argument("--window", type=_window, required=True, metavar="YYYY-MM-DD")
        c.add_argument("--city", metavar="CODE", help="this city's code at the clearing house"
                       " (default: [region] own)")
        if name == "export-clearing":
            c.add_argument("--out", type=Path, required=True, metavar="DIR",
                           help="write <DIR>/<window>/<issuer>.csv, manifest.json and manifest.sig")
        elif name == "send-clearing":
            c.add_argument("--to", required=True, metavar="URL", help="the house, e.g. http://127.0.0.1:7790")
            c.add_argument("--out", type=Path, metavar="DIR", help="also write the files there")
        else:
            c.add_argument("--house", required=True, metavar="URL", help="the house, e.g. http://127.0.0.1:7790")
            c.add_argument("--no-issuer-records", action="store_true", help="do not fetch (signed) the records"
                           " cleared against this city's cards, nor check them against its journal")
        c.add_argument("--issuer-code", action="append", default=[], metavar="PREFIX=CODE",
                       help="the house's code for an issuer number (repeatable; default: the [region]"
                       " registry's code, else the number itself)")
        c.add_argument("--key-file", type=Path, metavar="PEM", help=f"the city's Ed25519 signing key"
                       f" (default: {KEY_FILE} in the state dir, made on first use)")
        c.add_argument("--json", action="store_true", help="print JSON")
        c.set_defaults(func=_cmd, action=name)


def _cmd(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    return _run(settings, lambda conn: _ACTIONS[args.action](settings, conn, args))


def _run(settings: Settings, body: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    services = resolve_services(settings)

    async def main() -> int:
        await migrate_db(settings, services.db_url)
        conn = await connect_app(settings, services)
        try:
            return await body(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(main())
    except ValueError as exc:
        raise CityCardError(str(exc)) from None
    finally:
        services.stop()


async def _add(settings: Settings, conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    code = await store.add_counterparty(conn, args.counterparty_id, args.kind, args.name, args.commission_bp)
    if code == SettleCode.COUNTERPARTY_CONFLICT:
        raise CityCardError(f"counterparty {args.counterparty_id} is registered with other terms")
    print(f"counterparty {args.counterparty_id}: {'registered' if code == SettleCode.OK else 'already registered'}")
    return 0


async def _attach(settings: Settings, conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    code, ids = await store.attach(conn, args.counterparty_id, args.terminal)
    if code == SettleCode.UNKNOWN_COUNTERPARTY:
        raise CityCardError(f"counterparty {args.counterparty_id} is not registered")
    if code == SettleCode.TERMINAL_TAKEN:
        raise CityCardError(f"terminals attached to another counterparty: {', '.join(map(str, ids[:20]))}")
    print(f"counterparty {args.counterparty_id}: {len(ids)} terminal(s) attached now,"
          f" {len(set(args.terminal)) - len(ids)} already")
    return 0


def _tables(settings: Settings) -> tuple[FareTables, int]:
    tables = load_fare_tables(settings.fare_table_path())
    return tables, tables.versions[-1].utc_offset_ms  # the city's local day


async def _close(settings: Settings, conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    tables, offset_ms = _tables(settings)
    start_ms, end_ms = window_bounds(args.window, offset_ms)
    closing = await store.close_window(conn, tables, args.window, start_ms, end_ms, int(time.time() * 1000),
                                       offset_ms)
    if closing.code in _REFUSED:
        raise CityCardError(f"window {args.window} {_REFUSED[closing.code]}")
    out: dict[str, Any] = {"closed_now": closing.code == SettleCode.OK}
    if args.out is not None:
        from ..persistence.settlement_export import file_rows

        key_path = args.key_file or settings.state.path / KEY_FILE
        key = load_or_make_key(key_path)
        rows = await file_rows(conn, start_ms, end_ms, offset_ms)
        out["files"] = str(write_delivery(args.out, settings.city.name, closing, rows, key))
        out["public_key_hex"] = public_hex(key, key_path)
    _print(closing, args.json, out)
    return 0


async def _mark_settled(settings: Settings, conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    code = await store.settle_window(conn, args.window)
    if code == SettleCode.UNKNOWN_WINDOW:
        raise CityCardError(f"window {args.window} is not known (close it first)")
    if code == SettleCode.NOT_CLOSED:
        raise CityCardError(f"window {args.window} is open: close it first")
    print(f"window {args.window}: {'settled' if code == SettleCode.OK else 'already settled'}")
    return 0


async def _show(settings: Settings, conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    closing = await store.show(conn, args.window)
    if closing.code == SettleCode.UNKNOWN_WINDOW:
        raise CityCardError(f"window {args.window} is not known (close it first)")
    _print(closing, args.json, {})
    return 0


async def _subsidy(settings: Settings, conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    closing = await store.show(conn, args.window)
    if closing.code == SettleCode.UNKNOWN_WINDOW or closing.state == "open":
        raise CityCardError(f"window {args.window} is not closed: close it first")
    rows = [asdict(r) | {"day": day} for r, day in await store.subsidy(conn, args.window)]
    if args.json:
        print(json.dumps({"window": args.window, "rows": rows,
                          "concession_fen": sum(r["concession_fen"] for r in rows)}, indent=1))
        return 0
    print(f"window {args.window}: bus-subsidy basis (concession value = adult card fare - charged)")
    print(f"{'counterparty':<20} {'kind':>4} {'route':>6} {'cat':>3} {'day':<10} {'taps':>8} {'concession_fen':>14}")
    for r in rows:
        print(f"{r['counterparty_id']:<20} {r['kind']:>4} {r['route']:>6} {r['category']:>3} {r['day']:<10}"
              f" {r['taps']:>8} {r['concession_fen']:>14}")
    print(f"total concession_fen: {sum(r['concession_fen'] for r in rows)}")
    return 0


def _print(closing: store.Closing, as_json: bool, extra: dict[str, Any]) -> None:
    lines = [asdict(ln) for ln in closing.lines]
    found = [asdict(d) for d in closing.discrepancies]
    if as_json:
        print(json.dumps({"window": closing.window_id, "state": closing.state, "start_ms": closing.start_ms,
                          "end_ms": closing.end_ms, "lines": lines, "discrepancies": found, **extra}, indent=1))
        return
    again = "" if extra.get("closed_now", True) else " (closed before: the stored lines)"
    print(f"window {closing.window_id}: {closing.state}{again}")
    print(f"{'counterparty':<20} {'taps':>8} {'gross_fen':>12} {'commission_fen':>14} {'net_fen':>12}"
          f" {'visitors_online_fen':>19} {'visitors_offline_fen':>20}")
    for ln in closing.lines:
        print(f"{ln.counterparty_id:<20} {ln.taps:>8} {ln.gross_fen:>12} {ln.commission_fen:>14} {ln.net_fen:>12}"
              f" {ln.visitor_online_fen:>19} {ln.visitor_offline_fen:>20}")
    print(f"discrepancies: {len(found)}")
    for d in closing.discrepancies:
        print(f"  {d.what} counterparty={d.counterparty_id} terminal={d.terminal_id} expected {d.expected_fen} fen"
              f" / {d.expected_count}, found {d.found_fen} fen / {d.found_count}: {d.detail}")
    if "files" in extra:
        print(f"files: {extra['files']} (public key {extra['public_key_hex']})")


_ACTIONS: dict[str, Callable[[Settings, asyncpg.Connection, argparse.Namespace], Awaitable[int]]] = {
    "add": _add, "attach": _attach, "close": _close, "show": _show, "subsidy": _subsidy,
    "mark-settled": _mark_settled, "export-clearing": clearing_action, "send-clearing": clearing_action,
    "import-clearing": import_action,
}
