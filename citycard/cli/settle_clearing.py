"""``citycard settle export-clearing`` / ``send-clearing``: the city's side of regional
clearing (docs/clearing.md, "The clearing house service"): its cross-city records of a
window as signed clearing files, written or delivered, and its books compared with the house's;
and, once the house closed the window, its figures imported into the city's tables."""

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config.fare_table import load_fare_tables
from ..config.settings import Settings
from ..domain.settlement import window_bounds
from ..errors import CityCardError
from ..persistence.settlement_export import load_or_make_key, public_hex

KEY_FILE = "settlement_ed25519.pem"  # the city's signing key, in the state dir unless --key-file says otherwise


def _region_codes(settings: Settings) -> dict[int, str]:
    """Issuer number -> code, from the configured [region] registry (none: empty)."""
    if settings.region is None:
        return {}
    from ..config.issuers import registry_from_dict

    registry = registry_from_dict({"own": settings.region.own, "issuers": settings.region.issuers})
    return {i.card_prefix: i.code for i in registry}


def _issuer_codes(pairs: list[str]) -> dict[int, str]:
    out = {}
    for pair in pairs:
        prefix, _, code = pair.partition("=")
        if not prefix.isdigit() or not code:
            raise CityCardError(f"--issuer-code is PREFIX=CODE, e.g. 310000=SH; got {pair!r}")
        out[int(prefix)] = code
    return out


async def _delivery(settings: Settings, conn: asyncpg.Connection,
                    args: argparse.Namespace) -> tuple[Any, Ed25519PrivateKey, Path]:
    """The window's clearing delivery as this city makes it (the same bytes every time), its key."""
    from ..persistence import clearing_export

    tables = load_fare_tables(settings.fare_table_path())
    offset_ms = tables.versions[-1].utc_offset_ms  # the city's local day
    start_ms, end_ms = window_bounds(args.window, offset_ms)
    key_path = args.key_file or settings.state.path / KEY_FILE
    key = load_or_make_key(key_path)
    codes, city = _region_codes(settings), args.city
    if city is None:
        if settings.region is None:
            raise CityCardError("--city is needed: no [region] is configured to name this city")
        city = settings.region.own
    codes.update(_issuer_codes(args.issuer_code))
    d = await clearing_export.gather(conn, city, args.window, start_ms, end_ms, tables.home_issuer, key, codes,
                                     offset_ms)
    return d, key, key_path


async def import_action(settings: Settings, conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    """``settle import-clearing``: the house's closed report of the window booked into this
    city's tables (clearing_books), with its chargebacks and a discrepancy report; idempotent."""
    from ..persistence import clearing_books
    from ..protocols.clearing_files import parse_csv

    d, key, _ = await _delivery(settings, conn, args)
    sent = [r for name, data in sorted(d.files.items()) for r in parse_csv(data, name)]
    figures = await asyncio.to_thread(clearing_books.fetch, args.house.rstrip("/"), d.sender, d.window,
                                      None if args.no_issuer_records else key)
    got = await clearing_books.import_window(conn, figures, sent)
    if got.code == clearing_books.ImportCode.NOT_PARTICIPANT:
        raise CityCardError(f"the house's report of {d.window} has no statement for {d.sender}")
    if got.code == clearing_books.ImportCode.CONFLICT:
        raise CityCardError(f"window {d.window} was imported from another report of the house; nothing changed")
    if args.json:
        print(json.dumps(got.as_dict(), indent=1))
        return 0
    s = got.statement
    print(f"window {got.window}: {'imported' if got.code == clearing_books.ImportCode.OK else 'imported before'}"
          f" for {got.city}: net {s['net_fen']} fen (receivable {s['receivable_gross_fen']} less fees"
          f" {s['acquirer_fees_fen']}, payable {s['payable_gross_fen']} less fees {s['issuer_fees_fen']},"
          f" chargebacks paid {s['chargebacks_paid_fen']}, received {s['chargebacks_received_fen']})")
    for c in got.chargebacks:
        print(f"  chargeback {c.record_id} ({c.role}, {c.amount_fen} fen, operator {c.counterparty_id}): {c.reason}")
    print(f"discrepancies: {len(got.discrepancies)}")
    for x in got.discrepancies[:50]:
        print(f"  {x.what} {x.record_id or ''} expected {x.expected_fen} fen / {x.expected_count}, found"
              f" {x.found_fen} fen / {x.found_count}: {x.detail}")
    return 0


async def clearing_action(settings: Settings, conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    from ..clearing import client
    from ..persistence import clearing_export

    d, key, key_path = await _delivery(settings, conn, args)
    out: dict[str, Any] = {"window": d.window, "sender": d.sender, "records": d.records, "sum_fen": d.sum_fen,
                           "files": sorted(d.files), "held_back": d.held_back,
                           "public_key_hex": public_hex(key, key_path)}
    if args.out is not None:
        out["dir"] = str(clearing_export.write(args.out, d))
    if args.action == "send-clearing":
        status, answer = await asyncio.to_thread(client.deliver, args.to.rstrip("/"), d.sender, d.window,
                                                 d.manifest, d.signature, d.files)
        out["house"] = {"status": status, **answer}
        if status >= 300:
            raise CityCardError(f"the clearing house refused window {d.window} ({status}): {answer.get('code')}:"
                                f" {answer.get('reason')}")
        out["books"] = await _books(args.to.rstrip("/"), d, answer)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"window {d.window}: {d.records} cross-city records for {d.sum_fen} fen in {len(d.files)} file(s)"
          f" (key {out['public_key_hex']})")
    if "dir" in out:
        print(f"files: {out['dir']}")
    if "house" in out:
        h = out["house"]
        print(f"clearing house: accepted {h.get('accepted')}, rejected {h.get('rejected_count')}")
        for r in h.get("rejected", [])[:20]:
            print(f"  {r['record_id']}: {r['code']}: {r['reason']}")
        b = out["books"]
        print(f"books: cleared {b['cleared_fen']} fen by this city's files, the house's statement says"
              f" {b['house_receivable_gross_fen']}: {'equal' if b['equal'] else 'DIFFERENT'}")
    for why in d.held_back[:20]:
        print(f"held back: {why}")
    return 0


async def _books(base: str, d: Any, answer: dict[str, Any]) -> dict[str, Any]:
    """The city's books against the house's for this window: what its files cleared (its sum less
    the records the house rejected) and the house's provisional statement of it as acquirer."""
    from ..clearing import client
    from ..protocols.clearing_files import parse_csv

    amounts = {r.record_id: r.amount_fen for name, data in d.files.items() for r in parse_csv(data, name)}
    rejected = [r["record_id"] for r in answer.get("rejected", [])]
    cleared = d.sum_fen - sum(amounts.get(rid, 0) for rid in rejected)
    status, st = await asyncio.to_thread(client.statement, base, d.window, d.sender)
    house = st.get("receivable_gross_fen") if status == 200 else None
    complete = answer.get("rejected_count", 0) == len(rejected)  # the answer lists at most 1000
    return {"cleared_fen": cleared, "house_receivable_gross_fen": house, "equal": complete and house == cleared}
