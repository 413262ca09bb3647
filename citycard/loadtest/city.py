"""A synthetic city: cards with opening balances and a category mix, and terminals.

Two ways to build one. ``plan_cards`` / ``plan_terminals`` make the small demo city (a count of
cards and of terminals, terminals drawn from ``TERMINAL_WEIGHTS``). ``city_for_scale`` makes
the load lab's city, a ``CityModel`` scaled by one factor from a test town to the megacity
(scale 1.0: 10 M home cards, 20 M taps a day), with every terminal of it planned by
``plan_city_terminals`` and every card row by ``iter_city_cards`` (in bounded chunks).

Proportions at scale 1.0 (SEED-NOTES.md is the 2009 city: 2.01 M cards issued):

- Facilities serve residents, not cardholders. The 2009 base store held 6.6 M household
  records; a 10 M-card megacity is everyone carrying a card, ~1.5x that population. So:
  taxis 4,600 = 55 % of the fleet -> ~8,400 in 2009 -> 12,600, all accepting the card;
  medical institutions 175 -> ~260, four billing desks each -> 1,050 terminals.
- The merchant alliance grew with the card: 900+ POS for 2 M cards -> 4,500 for 10 M.
- Not in the seed (assumed): 500 bus routes with 24 buses each (12,000 validators);
  3,000 public-bike docks; 1,000 parking lots; 20 water-bus piers; 60 park gates;
  600 petrol pumps; 200 library desks.
- Terminals and the day's taps scale linearly with ``scale``, each count rounded and at least
  1. Bus routes: one per bus up to 500, so a city of >= 500 buses (scale >= 0.042) runs
  routes 1..500 and one of >= 315 buses (scale >= 0.027) includes route 315, the monthly pass'
  exception. Smaller test cities run routes 1..buses.
- Visitors: 2 % of the home cards again (at least one per issuer) are cards of other issuers
  with accounts here: Shanghai and Nanjing (accepted at 100 %), Ningbo (95 %) and Beijing
  (not accepted), 40/20/30/10.
- Taps by terminal kind (``TAPS_PER_TERMINAL_DAY``, relative tap rates for the arrival
  picker): a bus validator ~1,500 a day, a taxi ~35 rides, ... ~20.3 M a day at scale 1.0,
  about 89 % of them bus rides, as for a 2009 transit card before the metro.

Every id a terminal sends is one the default fare table prices: water-bus routes 1 and 2,
parks 1 to 3, merchants 9001 to 9003, parking lots 1.. (lot 7 has its own tariff).

One concept, kept in one module on purpose (over 400 lines): the synthetic city, its
proportions and the plans drawn from them belong together.
"""

import math
import random
import time
from bisect import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any, overload

from ..domain.cards import DEFAULT_APPS, HANGZHOU_ISSUER, App, CardStatus, Category
from ..domain.shard import shard_of
from ..domain.taps import MAX_TERMINAL_ID, TapKind

if TYPE_CHECKING:  # seed_city only: planning a city (and tapmix) loads no database driver
    import asyncpg

FIRST_TERMINAL_ID = 1001
# Category mix of cardholders (adult, student, elderly, disabled).
CATEGORY_WEIGHTS = ((Category.ADULT, 78), (Category.STUDENT, 10), (Category.ELDERLY, 10), (Category.DISABLED, 2))
# Terminal mix for the demo city: mostly bus validators. Bike docks and parking lots send both
# taps of a pair (rent/return, entry/exit); their kind here is the first of the pair.
TERMINAL_WEIGHTS = ((TapKind.BUS, 60), (TapKind.TAXI, 8), (TapKind.MERCHANT, 10), (TapKind.PETROL, 3),
                    (TapKind.WATER_BUS, 3), (TapKind.BIKE_RENT, 6), (TapKind.PARKING_ENTRY, 3),
                    (TapKind.PARK_ENTRY, 3), (TapKind.LIBRARY, 2), (TapKind.MEDICAL, 2))
MERCHANT_IDS = (9001, 9002, 9003)
N_BUS_ROUTES = 500
WATER_BUS_ROUTES = (1, 2)
PARK_IDS = (1, 2, 3)


@dataclass(frozen=True)
class TerminalPlan:
    terminal_id: int
    kind: int
    route: int


# -- card numbers --------------------------------------------------------------------------
_SERIAL_DIGITS = 10  # make_card_no: issuer, 10-digit serial, Luhn digit
_SERIAL_SPAN = 10_000_000_000
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a Luhn-doubled digit's contribution
_PLAIN = tuple(range(10))


def _digit_sums(lowest_doubled: bool) -> bytes:
    """Luhn contribution of every 5-digit chunk, indexed by the chunk's value."""
    d0, d1 = (_DOUBLED, _PLAIN) if lowest_doubled else (_PLAIN, _DOUBLED)
    return bytes(a + b + c + d + e for a in d0 for b in d1 for c in d0 for d in d1 for e in d0)


_LOW_SUMS = _digit_sums(True)  # serial digits 0-4 (from the right): positions 0, 2, 4 doubled
_HIGH_SUMS = _digit_sums(False)  # serial digits 5-9: positions 6 and 8 doubled


def _issuer_sum(issuer: int) -> int:
    """Luhn contribution of the issuer prefix (its lowest digit sits at position 10: doubled)."""
    total = 0
    for i, ch in enumerate(reversed(str(issuer))):
        total += _DOUBLED[int(ch)] if i % 2 == 0 else int(ch)
    return total


class CardNumbers(Sequence[int]):
    """The card numbers of serials ``first_serial`` .. ``first_serial + n_cards - 1`` of one
    issuer, in serial order: equal to ``make_card_no(serial, issuer)`` but computed on demand
    (~0.3 us, no list), so a 10 M-card city costs no memory and pickles in a few bytes."""

    __slots__ = ("issuer", "first_serial", "n_cards", "_body0", "_issuer_sum")

    def __init__(self, n_cards: int, issuer: int = HANGZHOU_ISSUER, first_serial: int = 1) -> None:
        if n_cards < 0 or first_serial < 0 or first_serial + n_cards > _SERIAL_SPAN:
            raise ValueError(f"{n_cards} serials from {first_serial} do not fit in {_SERIAL_DIGITS} digits")
        if issuer <= 0:
            raise ValueError(f"issuer must be > 0, got {issuer}")
        self.issuer = issuer
        self.first_serial = first_serial
        self.n_cards = n_cards
        self._body0 = issuer * _SERIAL_SPAN
        self._issuer_sum = _issuer_sum(issuer)

    def card_no(self, serial: int) -> int:
        """``make_card_no(serial, self.issuer)``, fast (serial need not be in this range)."""
        high, low = divmod(serial, 100_000)
        check = -(self._issuer_sum + _LOW_SUMS[low] + _HIGH_SUMS[high]) % 10
        return (self._body0 + serial) * 10 + check

    def __len__(self) -> int:
        return self.n_cards

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if type(index) is int:
            if index < 0:
                index += self.n_cards
            if not 0 <= index < self.n_cards:
                raise IndexError("card index out of range")
            serial = self.first_serial + index  # card_no(serial), inline: one call less per tap
            high, low = divmod(serial, 100_000)
            return (self._body0 + serial) * 10 + -(self._issuer_sum + _LOW_SUMS[low] + _HIGH_SUMS[high]) % 10
        if isinstance(index, slice):
            return [self.card_no(self.first_serial + i) for i in range(*index.indices(self.n_cards))]
        return self[index.__index__()]

    def __iter__(self) -> Iterator[int]:
        card_no = self.card_no
        for serial in range(self.first_serial, self.first_serial + self.n_cards):
            yield card_no(serial)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        body, _ = divmod(value, 10)
        serial = body - self._body0
        return (self.first_serial <= serial < self.first_serial + self.n_cards
                and self.card_no(serial) == value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CardNumbers):
            return (self.issuer, self.first_serial, self.n_cards) == (other.issuer, other.first_serial, other.n_cards)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.issuer, self.first_serial, self.n_cards))

    def __reduce__(self) -> tuple[type["CardNumbers"], tuple[int, int, int]]:
        return (CardNumbers, (self.n_cards, self.issuer, self.first_serial))

    def __repr__(self) -> str:
        return f"CardNumbers(n_cards={self.n_cards}, issuer={self.issuer}, first_serial={self.first_serial})"


def card_numbers(n_cards: int) -> list[int]:
    return list(CardNumbers(n_cards))


# -- card rows -----------------------------------------------------------------------------
CARD_SEED_COLUMNS = (
    "card_no", "shard_id", "category", "status", "opening_fen", "opening_general_fen", "opening_voucher_fen",
    "opening_allowance_fen", "opening_medical_fen", "apps", "credit_good", "insurance", "medical_from_purse",
    "monthly_pass_from", "monthly_pass_until", "park_pass_from", "park_pass_until", "voucher_until_ms",
    "voucher_categories", "allowance_until_ms",
)
CardRow = tuple[Any, ...]  # one row of the cards table, by CARD_SEED_COLUMNS
DAY_MS = 86_400_000
INSURANCE = ("employee", "retired", "resident")
_CATEGORIES = tuple(c for c, _ in CATEGORY_WEIGHTS)
_CATEGORY_CUM = list(accumulate(w for _, w in CATEGORY_WEIGHTS))
_CATEGORY_TOTAL = _CATEGORY_CUM[-1] + 0.0
_CATEGORY_HI = len(_CATEGORIES) - 1


def _home_row(rng: random.Random, card_no: int, n_shards: int, now_ms: int) -> CardRow:
    """One home cardholder. The draws are those of ``rng.choices`` and the rest, in the order
    plan_cards has always made them: the same seed gives the same city."""
    category = _CATEGORIES[bisect(_CATEGORY_CUM, rng.random() * _CATEGORY_TOTAL, 0, _CATEGORY_HI)]
    apps = int(DEFAULT_APPS)
    if rng.random() < 0.3:
        apps |= App.LIBRARY
    if rng.random() < 0.3:
        apps |= App.MERCHANT_MEMBER
    insured = rng.random() < 0.4
    if insured:
        apps |= App.MEDICAL
    monthly = rng.random() < 0.2
    park = rng.random() < 0.05
    allowance = rng.randrange(0, 20_001) if rng.random() < 0.1 else 0
    voucher = rng.randrange(0, 10_001) if rng.random() < 0.1 else 0
    return (
        card_no, shard_of(card_no, n_shards), int(category), int(CardStatus.ACTIVE),
        rng.randrange(500, 20_001), rng.randrange(0, 50_001) if rng.random() < 0.5 else 0, voucher,
        allowance, rng.randrange(0, 100_001) if insured else 0, apps, rng.random() < 0.9,
        rng.choice(INSURANCE) if insured else "", insured and rng.random() < 0.5,
        now_ms - DAY_MS if monthly else None, now_ms + 29 * DAY_MS if monthly else None,
        now_ms - DAY_MS if park else None, now_ms + 364 * DAY_MS if park else None,
        now_ms + 30 * DAY_MS if voucher else 0, ["retail", "books"] if voucher else [],
        now_ms + 30 * DAY_MS if allowance else 0,
    )


def _visitor_row(rng: random.Random, card_no: int, n_shards: int) -> CardRow:
    """A card of another issuer with an account here: an adult e-purse of 5 to 200 yuan, no
    local products (passes, allowances, insurance are the home city's)."""
    return (
        card_no, shard_of(card_no, n_shards), int(Category.ADULT), int(CardStatus.ACTIVE),
        rng.randrange(500, 20_001), 0, 0, 0, 0, int(DEFAULT_APPS), True, "", False,
        None, None, None, None, 0, [], 0,
    )


def plan_cards(n_cards: int, n_shards: int, seed: int, now_ms: int | None = None,
               issuer: int = HANGZHOU_ISSUER) -> list[CardRow]:
    """Rows for the cards table (CARD_SEED_COLUMNS): e-purse 5 to 200 yuan, and a share of
    monthly passes, park passes, allowances, vouchers, library and health-insurance holders.
    ``issuer``: the cards' issuer prefix (the region lab seeds each city with its own)."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return [_home_row(rng, card_no, n_shards, now_ms) for card_no in CardNumbers(n_cards, issuer)]


def plan_terminals(n_terminals: int, seed: int) -> list[TerminalPlan]:
    rng = random.Random(seed + 1)
    kinds = [k for k, _ in TERMINAL_WEIGHTS]
    weights = [w for _, w in TERMINAL_WEIGHTS]
    out = []
    for i in range(n_terminals):
        kind = int(rng.choices(kinds, weights)[0])
        routes: dict[int, Callable[[], int]] = {
            TapKind.BUS: lambda: rng.randint(1, N_BUS_ROUTES), TapKind.WATER_BUS: lambda: rng.randint(1, 2),
            TapKind.MERCHANT: lambda: rng.choice(MERCHANT_IDS), TapKind.PARK_ENTRY: lambda: rng.randint(1, 3),
            TapKind.PARKING_ENTRY: lambda: rng.randint(1, 9), TapKind.BIKE_RENT: lambda: rng.randint(1, 500),
        }
        route = routes.get(kind, lambda: 0)()
        out.append(TerminalPlan(FIRST_TERMINAL_ID + i, kind, route))
    return out


# -- the scaled city -----------------------------------------------------------------------
MEGACITY_CARDS = 10_000_000
MEGACITY_TAPS_PER_DAY = 20_000_000
MAX_SCALE = 100.0  # 1 G cards: serials have 10 digits
MAX_BUS_ROUTES = 500
ROUTE_315 = 315  # seed: the monthly pass covers routes 1-499 except 315
VISITOR_SHARE = 0.02
# Other issuers' cards with accounts here, by relative weight: three accepted by the default
# fare table's interop rules, one (Beijing) not.
VISITOR_ISSUERS = ((310000, 40), (320100, 20), (330200, 30), (110000, 10))
_VISITOR_SEED = 0x5EED_0715  # visitor rows draw from their own stream: home rows stay plan_cards'


@dataclass(frozen=True)
class TerminalKind:
    """One kind of terminal in the scaled city: the CityModel field counting it, the tap kind
    it opens with, its count at scale 1.0, and its taps per day (the relative tap rate)."""

    field: str
    kind: TapKind
    megacity: int
    taps_per_day: int


TERMINAL_KINDS = (
    TerminalKind("buses", TapKind.BUS, 12_000, 1_500),
    TerminalKind("taxis", TapKind.TAXI, 12_600, 35),
    TerminalKind("bike_docks", TapKind.BIKE_RENT, 3_000, 100),
    TerminalKind("parking_lots", TapKind.PARKING_ENTRY, 1_000, 300),
    TerminalKind("water_bus_piers", TapKind.WATER_BUS, 20, 1_000),
    TerminalKind("park_gates", TapKind.PARK_ENTRY, 60, 1_500),
    TerminalKind("merchant_pos", TapKind.MERCHANT, 4_500, 150),
    TerminalKind("petrol_pumps", TapKind.PETROL, 600, 200),
    TerminalKind("library_desks", TapKind.LIBRARY, 200, 200),
    TerminalKind("medical_desks", TapKind.MEDICAL, 1_050, 300),
)
# Relative tap rate of a terminal, by the kind it is planned with (bike docks and parking
# lots count both taps of their pairs).
TAPS_PER_TERMINAL_DAY = {int(k.kind): k.taps_per_day for k in TERMINAL_KINDS}


@dataclass(frozen=True)
class CityModel:
    """A city to load: cardholders, the day's taps and terminal counts by kind. Checked on
    construction; change one with ``dataclasses.replace`` (checked again)."""

    scale: float  # 1.0 = the megacity
    cards: int  # home cardholders: serials 1..cards of the home issuer
    visitor_cards: int  # other issuers' cards with accounts here (VISITOR_ISSUERS)
    taps_per_day: int
    buses: int
    bus_routes: int  # buses run routes 1..bus_routes
    taxis: int
    bike_docks: int
    parking_lots: int
    water_bus_piers: int
    park_gates: int
    merchant_pos: int
    petrol_pumps: int
    library_desks: int
    medical_desks: int

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.scale) and self.scale > 0):
            problems.append(f"scale must be finite and > 0, got {self.scale}")
        if not 1 <= self.cards < _SERIAL_SPAN:
            problems.append(f"cards must be in 1..{_SERIAL_SPAN - 1}, got {self.cards}")
        if not 0 <= self.visitor_cards < _SERIAL_SPAN:
            problems.append(f"visitor_cards must be in 0..{_SERIAL_SPAN - 1}, got {self.visitor_cards}")
        if self.taps_per_day < 1:
            problems.append(f"taps_per_day must be >= 1, got {self.taps_per_day}")
        for k in TERMINAL_KINDS:
            if getattr(self, k.field) < 0:
                problems.append(f"{k.field} must be >= 0, got {getattr(self, k.field)}")
        if self.buses > 0 and not 1 <= self.bus_routes <= self.buses:
            problems.append(f"bus_routes must be in 1..buses ({self.buses}): a bus for every route, "
                            f"got {self.bus_routes}")
        if self.buses == 0 and self.bus_routes != 0:
            problems.append(f"a city without buses has no bus routes, got {self.bus_routes}")
        n = self.n_terminals
        if n < 1:
            problems.append("the city needs at least one terminal")
        elif FIRST_TERMINAL_ID + n - 1 > MAX_TERMINAL_ID:
            problems.append(f"{n} terminals do not fit in terminal ids from {FIRST_TERMINAL_ID}")
        if problems:
            raise ValueError("invalid CityModel: " + "; ".join(problems))

    @property
    def n_terminals(self) -> int:
        return sum(getattr(self, k.field) for k in TERMINAL_KINDS)

    @property
    def n_seeded_cards(self) -> int:
        return self.cards + self.visitor_cards

    def terminal_counts(self) -> dict[TapKind, int]:
        """Terminals by the tap kind they are planned with (bike docks: BIKE_RENT, ...)."""
        return {k.kind: getattr(self, k.field) for k in TERMINAL_KINDS}

    def visitor_split(self) -> tuple[tuple[int, int], ...]:
        """(issuer, cards) of the visitor cards, by VISITOR_ISSUERS' weights (largest
        remainder; at least one of each issuer when there are enough)."""
        return tuple(zip((i for i, _ in VISITOR_ISSUERS),
                         _apportion(self.visitor_cards, [w for _, w in VISITOR_ISSUERS]), strict=True))


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` by ``weights``, largest remainder (ties to the earlier weight); then,
    if ``total`` allows, one for every weight that got none, taken from the largest share."""
    wsum = sum(weights)
    shares = [total * w // wsum for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % wsum), i))
    for i in by_remainder[:total - sum(shares)]:
        shares[i] += 1
    if total >= len(weights):
        for i, share in enumerate(shares):
            if share == 0:
                shares[max(range(len(shares)), key=shares.__getitem__)] -= 1
                shares[i] = 1
    return shares


def city_for_scale(scale: float) -> CityModel:
    """The city at ``scale`` (1.0 = megacity: 10 M home cards, 20 M taps a day; 0.001 = 10,000
    cards, 20,000 taps). Every count scales linearly, rounded, at least 1 (module docstring)."""
    if not (isinstance(scale, int | float) and math.isfinite(scale) and 0 < scale <= MAX_SCALE):
        raise ValueError(f"scale must be in (0, {MAX_SCALE}], got {scale!r}")
    cards = max(1, round(MEGACITY_CARDS * scale))
    counts = {k.field: max(1, round(k.megacity * scale)) for k in TERMINAL_KINDS}
    return CityModel(
        scale=float(scale), cards=cards,
        visitor_cards=max(len(VISITOR_ISSUERS), round(cards * VISITOR_SHARE)),
        taps_per_day=max(1, round(MEGACITY_TAPS_PER_DAY * scale)),
        bus_routes=min(MAX_BUS_ROUTES, counts["buses"]), **counts,
    )


def plan_city_terminals(model: CityModel, seed: int) -> list[TerminalPlan]:
    """Every terminal of the city, ids from FIRST_TERMINAL_ID, grouped by kind in
    TERMINAL_KINDS order. Every route has a bus (buses beyond one per route go to routes at
    random); docks and lots are numbered 1..n; piers alternate water-bus routes 1 and 2; park
    gates go round the three parks; POS belong to a merchant at random."""
    rng = random.Random(seed)
    rnd = rng.random
    out: list[TerminalPlan] = []
    next_id = FIRST_TERMINAL_ID
    for k in TERMINAL_KINDS:
        n = getattr(model, k.field)
        kind = int(k.kind)
        if k.kind == TapKind.BUS:
            routes = model.bus_routes
            route_of = [i % routes + 1 if i < routes else int(rnd() * routes) + 1 for i in range(n)]
        elif k.kind in (TapKind.BIKE_RENT, TapKind.PARKING_ENTRY):
            route_of = list(range(1, n + 1))
        elif k.kind == TapKind.WATER_BUS:
            route_of = [WATER_BUS_ROUTES[i % len(WATER_BUS_ROUTES)] for i in range(n)]
        elif k.kind == TapKind.PARK_ENTRY:
            route_of = [PARK_IDS[i % len(PARK_IDS)] for i in range(n)]
        elif k.kind == TapKind.MERCHANT:
            route_of = [MERCHANT_IDS[int(rnd() * len(MERCHANT_IDS))] for _ in range(n)]
        else:
            route_of = [0] * n
        out.extend(TerminalPlan(next_id + i, kind, route) for i, route in enumerate(route_of))
        next_id += n
    return out


def terminal_tap_weights(terminals: Sequence[TerminalPlan]) -> list[float]:
    """Relative tap rate of each terminal (TAPS_PER_TERMINAL_DAY by its kind), for
    ``schedule.TerminalPicker``: a bus validator is far busier than a taxi."""
    return [float(TAPS_PER_TERMINAL_DAY.get(t.kind, 1)) for t in terminals]


def home_card_numbers(model: CityModel) -> CardNumbers:
    """The home cards plan_city_cards seeds, in order: a lazy Sequence[int], no list."""
    return CardNumbers(model.cards)


def visitor_card_numbers(model: CityModel) -> list[int]:
    """The visitor cards plan_city_cards seeds, in order: serials 1..n of each issuer."""
    out: list[int] = []
    for issuer, n in model.visitor_split():
        out.extend(CardNumbers(n, issuer))
    return out


def iter_city_cards(model: CityModel, n_shards: int, seed: int, now_ms: int | None = None,
                    chunk_rows: int = 50_000) -> Iterator[list[CardRow]]:
    """CARD_SEED_COLUMNS rows of every card, in lists of at most ``chunk_rows`` (one COPY
    each, memory bounded): home cards first, the rows plan_cards(model.cards, n_shards, seed,
    now_ms) makes, then the visitor cards of visitor_card_numbers."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    rng = random.Random(seed)
    chunk: list[CardRow] = []
    for card_no in home_card_numbers(model):
        chunk.append(_home_row(rng, card_no, n_shards, now_ms))
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    rng = random.Random(seed ^ _VISITOR_SEED)
    for card_no in visitor_card_numbers(model):
        chunk.append(_visitor_row(rng, card_no, n_shards))
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def plan_city_cards(model: CityModel, n_shards: int, seed: int, now_ms: int | None = None) -> list[CardRow]:
    """All of iter_city_cards in one list (10 M rows at scale 1.0: seed in chunks instead)."""
    return [row for chunk in iter_city_cards(model, n_shards, seed, now_ms) for row in chunk]


async def seed_city(conn: "asyncpg.Connection", cards: list[CardRow], terminals: list[TerminalPlan]) -> None:
    await conn.copy_records_to_table("cards", records=cards, columns=CARD_SEED_COLUMNS)
    await conn.copy_records_to_table(
        "terminals",
        records=[(t.terminal_id, t.kind, True, f"{TapKind(t.kind).name.lower()}-{t.terminal_id}", t.route)
                 for t in terminals],
        columns=("terminal_id", "kind", "enabled", "name", "route"),
    )

