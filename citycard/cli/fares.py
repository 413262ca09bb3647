"""Operator tools over the fare rules: ``fares check``, ``fares quote`` and ``parks visitors``.

``quote`` prices one tap with the very code the tap path uses: it builds a CardState and a Tap
and calls ``citycard.domain.rules.decide``. State a tap needs from earlier taps (an open bike
rental or parking session, rides already taken today, a tap on the same terminal a moment
ago) is made by deciding and applying those earlier taps with the same rules first.
"""

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec

from ..config.fare_table import load_fare_tables
from ..domain.cards import DEFAULT_APPS, App, CardState, Category, make_card_no
from ..domain.purses import N_PURSES, PURSE_NAMES
from ..domain.results import Result
from ..domain.rules import (
    LIBRARY_BORROW,
    LIBRARY_RETURN,
    Decision,
    apply_effects,
    decide,
    local_day,
    passback_mode,
)
from ..domain.tables import CompiledVersion, FareTables
from ..domain.taps import BillClass, Tap, TapKind
from ..errors import CityCardError

MODES: dict[str, TapKind] = {
    "bus": TapKind.BUS, "water_bus": TapKind.WATER_BUS, "bike_rent": TapKind.BIKE_RENT,
    "bike_return": TapKind.BIKE_RETURN, "parking_entry": TapKind.PARKING_ENTRY,
    "parking_exit": TapKind.PARKING_EXIT, "taxi": TapKind.TAXI, "petrol": TapKind.PETROL,
    "merchant": TapKind.MERCHANT, "park": TapKind.PARK_ENTRY, "library": TapKind.LIBRARY,
    "medical": TapKind.MEDICAL,
}
CATEGORIES = tuple(c.name.lower() for c in Category)
BILL_CLASSES = tuple(c.name.lower() for c in BillClass if c != BillClass.NONE)
PRODUCTS = ("monthly_pass", "park_pass")
APPS = {"library": App.LIBRARY, "medical": App.MEDICAL, "merchant_member": App.MERCHANT_MEMBER}
DEFAULT_PURSES: Mapping[str, int] = {"epurse": 100_000}
MAX_FEN = 100_000_000
MAX_PRIOR_RIDES = 1000
PRODUCT_HALF_WINDOW_MS = 30 * 86_400_000  # a product quoted as valid is valid 30 days either side
_ROUTE_NEEDED = {"bus", "water_bus", "park", "library", "parking_entry", "parking_exit"}
_AMOUNT_NEEDED = {"taxi", "petrol", "merchant", "medical"}
_QUOTE_TERMINAL = 1
_RIDES_TERMINAL = 1000  # earlier rides today: one other terminal each, from here up


@dataclass(frozen=True)
class QuoteSpec:
    """A card and one tap, as the ``fares quote`` flags describe them."""

    mode: str
    at_ms: int
    route: int = 0
    base_fen: int | None = None  # bus / water bus: this route's base fare instead of the table's
    amount_fen: int = 0
    bill_class: str = ""
    category: str = "adult"
    products: tuple[str, ...] = ()
    insurance: str = ""
    medical_from_purse: bool = False
    credit_good: bool = True
    apps: tuple[str, ...] = ()
    purses: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PURSES))
    voucher_categories: frozenset[str] = frozenset()
    issuer: int | None = None  # None: the table's home issuer
    rented_at_ms: int | None = None
    entered_at_ms: int | None = None
    rides_today: int = 0
    tapped_before_s: int | None = None


# -- fares check ---------------------------------------------------------------------------
def check_summary(path: Path, tables: FareTables) -> str:
    versions = ", ".join(f"{c.version} from {c.v.effective_from}" for c in tables.versions)
    v = tables.versions[-1].v
    routes = len(set(v.bus.route_base_fen) | set(v.bus.route_zone))
    counts = (f"bus routes {routes}, water-bus routes {len(v.water_bus.route_fen)}, parks {len(v.parks)}, "
              f"merchants {len(v.merchants)}, parking lots {len(v.parking.lots)}, "
              f"concessions {len(v.concessions)}, other issuers {len(v.interop.issuers)}")
    return (f"OK {path}: {tables.city}, home issuer {tables.home_issuer}; versions {versions}; "
            f"latest: {counts}")


def cmd_check(path: Path) -> int:
    print(check_summary(path, load_fare_tables(path)))
    return 0


# -- fares quote ---------------------------------------------------------------------------
def parse_time(text: str, default_offset_ms: int) -> int:
    """ISO 8601 time to epoch ms; without an offset it is local time in ``default_offset_ms``."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise CityCardError(f"not an ISO 8601 time: {text!r} (e.g. 2009-03-02T08:15:00+08:00)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone(timedelta(milliseconds=default_offset_ms)))
    return int(dt.timestamp() * 1000)


def parse_purses(items: list[str] | None) -> dict[str, int]:
    """``NAME=FEN`` items over the default (e-purse 100000 fen, every other purse 0)."""
    purses = dict(DEFAULT_PURSES)
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or name not in PURSE_NAMES:
            raise CityCardError(f"--purse {item!r}: expected NAME=FEN with NAME one of {', '.join(PURSE_NAMES)}")
        try:
            fen = int(value)
        except ValueError:
            raise CityCardError(f"--purse {item!r}: {value!r} is not a whole number of fen") from None
        if not 0 <= fen <= MAX_FEN:
            raise CityCardError(f"--purse {item!r}: fen must be between 0 and {MAX_FEN}")
        purses[name] = fen
    return purses


def validate(tables: FareTables, spec: QuoteSpec) -> None:
    """Flags that cannot describe a tap: a clear message instead of a BAD_TAP."""
    mode = spec.mode
    if mode not in MODES:
        raise CityCardError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    if mode in _ROUTE_NEEDED and spec.route <= 0:
        what = {"park": "the park id", "library": f"{LIBRARY_BORROW} to borrow or {LIBRARY_RETURN} to return",
                "parking_entry": "the parking lot", "parking_exit": "the parking lot"}.get(mode, "the route")
        raise CityCardError(f"--mode {mode} needs --route ({what})")
    if mode == "library" and spec.route not in (LIBRARY_BORROW, LIBRARY_RETURN):
        raise CityCardError(f"--mode library: --route is {LIBRARY_BORROW} (borrow) or {LIBRARY_RETURN} (return)")
    if mode in _AMOUNT_NEEDED and spec.amount_fen <= 0:
        raise CityCardError(f"--mode {mode} needs --amount-fen (the amount the terminal sends, > 0)")
    if mode != "medical" and spec.bill_class:
        raise CityCardError("--bill-class applies to --mode medical only")
    if mode == "medical" and not spec.bill_class:
        raise CityCardError(f"--mode medical needs --bill-class ({', '.join(BILL_CLASSES)})")
    if spec.base_fen is not None and mode not in ("bus", "water_bus"):
        raise CityCardError("--base-fen applies to --mode bus and water_bus only")
    if spec.rented_at_ms is not None and mode not in ("bike_rent", "bike_return"):
        raise CityCardError("--rented-at applies to --mode bike_rent and bike_return only")
    if spec.entered_at_ms is not None and mode not in ("parking_entry", "parking_exit"):
        raise CityCardError("--entered-at applies to --mode parking_entry and parking_exit only")
    for start, flag in ((spec.rented_at_ms, "--rented-at"), (spec.entered_at_ms, "--entered-at")):
        if start is not None and start > spec.at_ms:
            raise CityCardError(f"{flag} must not be after --at")
    if spec.insurance:
        known = sorted({name for c in tables.versions for name in c.v.medical.fund_percent})
        if spec.insurance not in known:
            raise CityCardError(f"--insurance {spec.insurance!r}: the table knows {', '.join(known) or 'none'}")
    if spec.issuer is not None and not 1 <= spec.issuer <= 999_999:
        raise CityCardError("--issuer must be between 1 and 999999")
    if not 0 <= spec.rides_today <= MAX_PRIOR_RIDES:
        raise CityCardError(f"--rides-today must be between 0 and {MAX_PRIOR_RIDES}")
    if spec.tapped_before_s is not None and spec.tapped_before_s < 0:
        raise CityCardError("--tapped-before must be >= 0 seconds")


def with_route_base(tables: FareTables, mode: str, route: int, base_fen: int) -> FareTables:
    """The same tables with one bus (or water-bus) route's base fare set to ``base_fen``."""
    if not 0 <= base_fen <= MAX_FEN:
        raise CityCardError(f"--base-fen must be between 0 and {MAX_FEN}")
    out: list[CompiledVersion] = []
    for c in tables.versions:
        v = c.v
        if mode == "bus":
            fares = {**v.bus.route_base_fen, str(route): base_fen}
            v = msgspec.structs.replace(v, bus=msgspec.structs.replace(v.bus, route_base_fen=fares))
        else:
            fares = {**v.water_bus.route_fen, str(route): base_fen}
            v = msgspec.structs.replace(v, water_bus=msgspec.structs.replace(v.water_bus, route_fen=fares))
        out.append(CompiledVersion(v, tables.home_issuer))
    return FareTables(tables.city, tables.home_issuer, out)


def make_card(tables: FareTables, spec: QuoteSpec) -> CardState:
    purses = [0] * N_PURSES
    for name, fen in spec.purses.items():
        purses[PURSE_NAMES.index(name)] = fen
    apps = int(DEFAULT_APPS)
    for name in spec.apps:
        apps |= int(APPS[name])
    window = (spec.at_ms - PRODUCT_HALF_WINDOW_MS, spec.at_ms + PRODUCT_HALF_WINDOW_MS)
    return CardState(
        make_card_no(1, spec.issuer or tables.home_issuer), 0, int(Category[spec.category.upper()]), purses[0],
        purses=purses, apps=apps, credit_good=spec.credit_good, insurance=spec.insurance,
        medical_from_purse=spec.medical_from_purse,
        monthly_pass=window if "monthly_pass" in spec.products else None,
        park_pass=window if "park_pass" in spec.products else None,
        voucher_categories=spec.voucher_categories,
    )


def _tap(card: CardState, kind: int, spec: QuoteSpec, terminal_id: int, time_ms: int) -> Tap:
    bill = int(BillClass[spec.bill_class.upper()]) if spec.bill_class else 0
    return Tap(terminal_id, 1, card.card_no, time_ms, int(kind), spec.route, spec.amount_fen, False, bill)


def _apply(tables: FareTables, card: CardState, tap: Tap) -> Decision:
    """Decide a tap and, when OK, change the card exactly as the ledger does."""
    d = decide(tables, card, tap)
    if d.ok:
        apply_effects(card, tap.kind, tap.route, tap.terminal_id, tap.time_ms, d.deltas, d.concession,
                      local_day(tables, tap.time_ms), passback_mode(tables, tap.kind, tap.time_ms))
    return d


def _opening(tables: FareTables, card: CardState, kind: TapKind, spec: QuoteSpec, start_ms: int, flag: str) -> None:
    d = _apply(tables, card, _tap(card, kind, spec, _QUOTE_TERMINAL + 1, start_ms))
    if not d.ok:
        raise CityCardError(f"the {kind.name} tap at {flag} was refused: {Result(d.result).name} "
                            f"({'; '.join(d.rules) or 'no rule'})")


def quote(tables: FareTables, spec: QuoteSpec) -> Decision:
    """The decision for the tap ``spec`` describes, after the earlier taps it names."""
    validate(tables, spec)
    if spec.base_fen is not None:
        tables = with_route_base(tables, spec.mode, spec.route, spec.base_fen)
    card = make_card(tables, spec)
    kind = MODES[spec.mode]
    if spec.rented_at_ms is not None:
        _opening(tables, card, TapKind.BIKE_RENT, spec, spec.rented_at_ms, "--rented-at")
    if spec.entered_at_ms is not None:
        _opening(tables, card, TapKind.PARKING_ENTRY, spec, spec.entered_at_ms, "--entered-at")
    for i in range(spec.rides_today):  # the same ride, earlier today, each on another terminal
        _apply(tables, card, _tap(card, kind, spec, _RIDES_TERMINAL + i, spec.at_ms))
    if spec.tapped_before_s is not None:  # the same tap on the same terminal, a moment ago
        _apply(tables, card, _tap(card, kind, spec, _QUOTE_TERMINAL, spec.at_ms - spec.tapped_before_s * 1000))
    return decide(tables, card, _tap(card, kind, spec, _QUOTE_TERMINAL, spec.at_ms))


def decision_json(d: Decision) -> dict[str, Any]:
    """The decision for people and scripts. ``purses`` lists every purse, 0 where unchanged."""
    return {
        "result": Result(d.result).name,
        "fare_fen": d.fare_fen,
        "base_fen": d.base_fen,
        "rules": list(d.rules),
        "purses": {name: int(d.deltas[i]) for i, name in enumerate(PURSE_NAMES)},
        "fund_fen": d.fund_fen,
        "version": d.version,
    }


def spec_from_args(args: Any, tables: FareTables) -> QuoteSpec:
    offset = tables.versions[0].utc_offset_ms
    at_ms = parse_time(args.at, offset) if args.at else int(time.time() * 1000)
    categories = frozenset(c.strip() for c in (args.voucher_categories or "").split(",") if c.strip())
    return QuoteSpec(
        mode=args.mode, at_ms=at_ms, route=args.route or 0, base_fen=args.base_fen,
        amount_fen=args.amount_fen or 0, bill_class=args.bill_class or "", category=args.category,
        products=tuple(args.product or ()), insurance=args.insurance or "",
        medical_from_purse=args.medical_from_purse, credit_good=not args.no_credit,
        apps=tuple(args.app or ()), purses=parse_purses(args.purse), voucher_categories=categories,
        issuer=args.issuer,
        rented_at_ms=parse_time(args.rented_at, offset) if args.rented_at else None,
        entered_at_ms=parse_time(args.entered_at, offset) if args.entered_at else None,
        rides_today=args.rides_today, tapped_before_s=args.tapped_before,
    )


def cmd_quote(args: Any, table_path: Path) -> int:
    tables = load_fare_tables(table_path)
    d = quote(tables, spec_from_args(args, tables))
    print(json.dumps(decision_json(d)))
    return 0


# -- parks visitors ------------------------------------------------------------------------
def visitors_report(settings: Any, day: date | None) -> list[dict[str, Any]]:
    """Rows of (park id, name, day, visitors, cards) from the configured database."""
    import asyncio

    import asyncpg

    from ..persistence import db
    from ..persistence.reports import day_start_ms, park_visitors
    from .services import resolve_services

    tables = load_fare_tables(settings.fare_table_path())
    offset = tables.versions[0].utc_offset_ms

    unmigrated = CityCardError(f"no journal in schema {settings.database.schema!r}: run `citycard db migrate` first")

    async def fetch(url: str) -> list[Any]:
        try:  # as the app role, which the first migration creates
            conn = await db.connect(url, settings.database.schema)
        except asyncpg.InvalidAuthorizationSpecificationError:
            raise unmigrated from None
        try:
            return await park_visitors(conn, offset, day)
        except asyncpg.UndefinedTableError:
            raise unmigrated from None
        finally:
            await conn.close()

    services = resolve_services(settings)
    try:
        rows = asyncio.run(fetch(services.app_url(settings)))
    finally:
        services.stop()
    out = []
    for r in rows:
        ver = tables.at(day_start_ms(r.day, offset)) or tables.versions[-1]
        park = ver.parks.get(r.park_id)
        out.append({"park_id": r.park_id, "name": park.name if park else "", "day": r.day.isoformat(),
                    "visitors": r.visitors, "cards": r.cards})
    return out


def format_visitors(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no park entries"
    head = ("park", "name", "day", "visitors", "cards")
    cells = [head] + [(str(r["park_id"]), r["name"], r["day"], str(r["visitors"]), str(r["cards"])) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    right = {0, 3, 4}
    return "\n".join(
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        .rstrip() for row in cells
    )


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CityCardError(f"--day {text!r}: expected YYYY-MM-DD") from None


def cmd_visitors(settings: Any, day_text: str | None, as_json: bool) -> int:
    rows = visitors_report(settings, parse_day(day_text) if day_text else None)
    print(json.dumps(rows) if as_json else format_visitors(rows))
    return 0
