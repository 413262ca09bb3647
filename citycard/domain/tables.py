"""Fare tables: every rule's numbers, versioned by effective-from time.

A table file holds a list of versions; each version after the first states only what changes
(it is merged over the one before). A tap is priced by the version in force at the tap's own
time, also when it arrives late. Parsing is pure (dict in, tables out); errors name the key path.
"""

import bisect
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from ..errors import CityCardError
from .cards import Category

Fen = Annotated[int, Meta(ge=0, le=100_000_000)]
Percent = Annotated[int, Meta(ge=0, le=100)]
Minutes = Annotated[int, Meta(ge=0, le=100_000)]
MODES = ("bus", "water_bus", "bike", "parking", "taxi", "petrol", "merchant", "park", "library", "medical")
CATEGORY_NAMES = {c.name.lower(): int(c) for c in Category}


class FareTableError(CityCardError):
    """A fare table is invalid; ``path`` names the key (e.g. ``versions[1].bus.card_percent``)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class _S(Struct, forbid_unknown_fields=True, frozen=True):
    pass


class MonthlyPass(_S, frozen=True):
    percent: Percent = 50  # of the route's base fare
    route_from: int = 1
    route_to: int = 499
    except_routes: list[int] = msgspec.field(default_factory=lambda: [315])


class Bus(_S, frozen=True):
    card_percent: Percent = 91  # a card pays this % of the ticket price
    default_base_fen: Fen = 200
    route_base_fen: dict[str, Fen] = {}
    default_zone: str = "urban"
    route_zone: dict[str, str] = {}
    monthly_pass: MonthlyPass = MonthlyPass()


class WaterBus(_S, frozen=True):
    default_fen: Fen = 300
    route_fen: dict[str, Fen] = {}
    zone: str = "urban"


class Concession(_S, frozen=True):
    category: str
    mode: str = "*"  # a mode name or "*"
    zone: str = "*"  # a zone name or "*"
    percent: Percent = 100  # of the base fare; 0 = free
    rides_per_day: Annotated[int, Meta(ge=0, le=1000)] = 0  # 0 = no limit; past it: card fare


class Bike(_S, frozen=True):
    free_minutes: Minutes = 60
    per_hour_fen: Fen = 100
    max_charge_fen: Fen = 2000  # per rental
    deposit_fen: Fen = 20000  # held at rental unless the holder is in good credit standing


class ParkingTariff(_S, frozen=True):
    free_minutes: Minutes = 15
    first_hour_fen: Fen = 500
    per_hour_fen: Fen = 300
    daily_cap_fen: Fen = 4000


class Parking(_S, frozen=True):
    default: ParkingTariff = ParkingTariff()
    lots: dict[str, ParkingTariff] = {}


class Merchant(_S, frozen=True):
    name: str = ""
    category: str = "retail"
    member_discount_percent: Percent = 0  # for merchant-alliance members


class Park(_S, frozen=True):
    name: str = ""
    ticket_fen: Fen = 0
    in_annual_pass: bool = True
    pass_only: bool = False  # no tickets at the gate: pass holders only


class Library(_S, frozen=True):
    deposit_fen: Fen = 10000


class Medical(_S, frozen=True):
    # insurance category -> bill class -> % of the bill the fund pays
    fund_percent: dict[str, dict[str, Percent]] = {}


class Issuer(_S, frozen=True):
    accepted: bool = True
    percent: Percent = 100  # of the base fare, for buses and water buses (park tickets: full price)


class Interop(_S, frozen=True):
    accept_unlisted: bool = False
    unlisted_percent: Percent = 100
    issuers: dict[str, Issuer] = {}


class Version(_S, frozen=True):
    version: Annotated[int, Meta(ge=1)]
    effective_from: str  # ISO 8601 with offset, e.g. 2009-01-01T00:00:00+08:00
    max_amount_fen: Fen = 1_000_000
    anti_passback_s: Annotated[int, Meta(ge=0, le=3600)] = 30
    anti_passback_modes: list[str] = msgspec.field(default_factory=lambda: ["bus", "water_bus", "park"])
    bus: Bus = Bus()
    water_bus: WaterBus = WaterBus()
    concessions: list[Concession] = []
    bike: Bike = Bike()
    parking: Parking = Parking()
    merchants: dict[str, Merchant] = {}
    parks: dict[str, Park] = {}
    library: Library = Library()
    medical: Medical = Medical()
    interop: Interop = Interop()


class TableFile(_S, frozen=True):
    city: str
    home_issuer: Annotated[int, Meta(ge=1, le=999_999)]
    versions: Annotated[list[dict[str, Any]], Meta(min_length=1)]


class CompiledVersion:
    """A version with its lookups built once, for the tap path."""

    def __init__(self, v: Version, home_issuer: int) -> None:
        self.v = v
        self.version = v.version
        self.effective_from_ms = iso_to_ms(v.effective_from)
        offset = datetime.fromisoformat(v.effective_from).utcoffset()
        self.utc_offset_ms = int(offset.total_seconds() * 1000) if offset is not None else 0  # local days
        self.home_issuer = home_issuer
        b = v.bus
        self.bus_base = {int(k): fen for k, fen in b.route_base_fen.items()}
        self.bus_zone = {int(k): z for k, z in b.route_zone.items()}
        mp = b.monthly_pass
        self.pass_routes = (mp.route_from, mp.route_to, frozenset(mp.except_routes))
        self.water_fen = {int(k): fen for k, fen in v.water_bus.route_fen.items()}
        self.lots = {int(k): t for k, t in v.parking.lots.items()}
        self.merchants = {int(k): m for k, m in v.merchants.items()}
        # merchants registered through card services (domain/merchant_book.py), shared by every
        # version of one FareTables: merchant id -> (effective-from times, terms), time order
        self.registered: dict[int, tuple[list[int], list[Merchant]]] = {}
        self.parks = {int(k): p for k, p in v.parks.items()}
        self.issuers = {int(k): i for k, i in v.interop.issuers.items()}
        self.passback_modes = frozenset(v.anti_passback_modes)
        # (mode, zone, category) -> (index, Concession); most specific match wins
        self.concessions: dict[tuple[str, str, int], tuple[int, Concession]] = {}
        for i, c in enumerate(v.concessions):
            self.concessions.setdefault((c.mode, c.zone, CATEGORY_NAMES[c.category]), (i, c))
        # (mode, category) pairs some concession may apply to: the rest take the fast path
        self.concession_modes = {
            (mode, CATEGORY_NAMES[c.category]) for c in v.concessions for mode in MODES
            if c.mode in ("*", mode)
        }
        pct = b.card_percent
        self.bus_card_fare = {r: (base * pct + 50) // 100 for r, base in self.bus_base.items()}
        self.bus_default_card_fare = (b.default_base_fen * pct + 50) // 100
        self.bus_card_rule = (f"bus.card_percent {pct}%",)
        # Categories no bus concession can touch: their rides may take the ledger's inline path.
        self.bus_plain_categories = frozenset(
            cat for cat in CATEGORY_NAMES.values() if ("bus", cat) not in self.concession_modes)
        self.bus_passback_ms = v.anti_passback_s * 1000 if "bus" in self.passback_modes else -1
        self.end_ms = 2**63 - 1  # set by FareTables: when the next version takes over
        # the ledger's memo of rules.home_ride_fare: (kind, route, category, has_pass) -> fare
        self.inline_fares: dict[tuple[int, int, int, bool], int] = {}

    def concession(self, mode: str, zone: str, category: int) -> tuple[int, Concession] | None:
        table = self.concessions
        return (table.get((mode, zone, category)) or table.get((mode, "*", category))
                or table.get(("*", zone, category)) or table.get(("*", "*", category)))


class FareTables:
    def __init__(self, city: str, home_issuer: int, versions: list[CompiledVersion]) -> None:
        self.city = city
        self.home_issuer = home_issuer
        self.versions = sorted(versions, key=lambda c: c.effective_from_ms)
        self._starts = [c.effective_from_ms for c in self.versions]
        for cur, nxt in zip(self.versions, self.versions[1:], strict=False):
            cur.end_ms = nxt.effective_from_ms
        self._last: CompiledVersion | None = None
        self.registered: dict[int, tuple[list[int], list[Merchant]]] = {}
        for c in self.versions:
            c.registered = self.registered

    def at(self, time_ms: int) -> CompiledVersion | None:
        """The version in force at ``time_ms``; None before the first one."""
        last = self._last
        if last is not None and last.effective_from_ms <= time_ms < last.end_ms:
            return last  # nearly every tap falls in the version the previous one did
        i = bisect.bisect_right(self._starts, time_ms) - 1
        if i < 0:
            return None
        self._last = self.versions[i]
        return self._last

    @property
    def current_version(self) -> int:
        """The highest version number in the file (it may not be in force yet)."""
        return max(c.version for c in self.versions)

    def version_at(self, time_ms: int) -> int:
        """The version number in force at ``time_ms`` (0 before the first)."""
        ver = self.at(time_ms)
        return ver.version if ver is not None else 0


def iso_to_ms(text: str) -> int:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2009-01-01T00:00:00+08:00")
    return int(dt.timestamp() * 1000)


def parse_tables(raw: Mapping[str, Any]) -> FareTables:
    """Validate and compile a table file's contents. Raises FareTableError naming the key."""
    try:
        head = msgspec.convert(dict(raw), TableFile)
    except msgspec.ValidationError as exc:
        raise FareTableError(*_split(str(exc))) from None
    compiled: list[CompiledVersion] = []
    merged: dict[str, Any] = {}
    seen: set[int] = set()
    for i, part in enumerate(head.versions):
        merged = _merge(merged, part)
        path = f"versions[{i}]"
        _check_keyed_sections(merged, path)
        try:
            v = msgspec.convert(merged, Version)
        except msgspec.ValidationError as exc:
            msg, sub = _split(str(exc))
            raise FareTableError(msg, f"{path}.{sub}" if sub else path) from None
        _check(v, path)
        if v.version in seen:
            raise FareTableError(f"version {v.version} appears twice", f"{path}.version")
        seen.add(v.version)
        compiled.append(CompiledVersion(v, head.home_issuer))
    starts = [c.effective_from_ms for c in compiled]
    if starts != sorted(starts) or len(set(starts)) != len(starts):
        raise FareTableError("versions must take effect in strictly increasing time order", "versions")
    return FareTables(head.city, head.home_issuer, compiled)


def _check(v: Version, path: str) -> None:
    try:
        iso_to_ms(v.effective_from)
    except ValueError as exc:
        raise FareTableError(str(exc), f"{path}.effective_from") from None
    for name, mapping in (("bus.route_base_fen", v.bus.route_base_fen), ("bus.route_zone", v.bus.route_zone),
                          ("water_bus.route_fen", v.water_bus.route_fen), ("parking.lots", v.parking.lots),
                          ("merchants", v.merchants), ("parks", v.parks), ("interop.issuers", v.interop.issuers)):
        for key in mapping:
            if not key.isdigit() or int(key) <= 0:
                raise FareTableError(f"key {key!r} must be a positive whole number", f"{path}.{name}")
    for j, c in enumerate(v.concessions):
        where = f"{path}.concessions[{j}]"
        if c.category not in CATEGORY_NAMES:
            raise FareTableError(f"unknown category {c.category!r}; one of {sorted(CATEGORY_NAMES)}",
                                 f"{where}.category")
        if c.mode != "*" and c.mode not in MODES:
            raise FareTableError(f"unknown mode {c.mode!r}; one of {list(MODES)} or '*'", f"{where}.mode")
    for m in v.anti_passback_modes:
        if m not in MODES:
            raise FareTableError(f"unknown mode {m!r}", f"{path}.anti_passback_modes")
    mp = v.bus.monthly_pass
    if mp.route_from > mp.route_to:
        raise FareTableError("route_from must not exceed route_to", f"{path}.bus.monthly_pass")


_KEYED_SECTIONS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("parks",), Park), (("merchants",), Merchant), (("parking", "lots"), ParkingTariff),
    (("interop", "issuers"), Issuer), (("medical", "fund_percent"), dict[str, Percent]),
)


def _check_keyed_sections(raw: Mapping[str, Any], path: str) -> None:
    """Validate each entry of the sections keyed by id, so an error names the id."""
    for keys, kind in _KEYED_SECTIONS:
        section: Any = raw
        for k in keys:
            section = section.get(k) if isinstance(section, Mapping) else None
        if not isinstance(section, Mapping):
            continue
        for key, value in section.items():
            try:
                msgspec.convert(value, kind)
            except msgspec.ValidationError as exc:
                msg, sub = _split(str(exc))
                where = f"{path}.{'.'.join(keys)}.{key}"
                raise FareTableError(msg, f"{where}.{sub}" if sub else where) from None


def _split(message: str) -> tuple[str, str]:
    """msgspec says "Expected `int`, got `str` - at `$.bus.card_percent`": (message, path).
    For an unknown key it names the enclosing object; the key goes on the path."""
    msg, sep, where = message.rpartition(" - at `")
    if not sep:
        msg, where = message, "$"
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    if msg.startswith("Object contains unknown field `"):
        field = msg.split("`")[1]
        path = f"{path}.{field}" if path else field
    return msg, path


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, val in extra.items():
        if isinstance(val, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], val)
        else:
            out[k] = val
    return out
