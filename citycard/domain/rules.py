"""The city's fare rules: one decision per tap, driven by the fare table in force at the tap's
own time. ``decide`` reads the card and never changes it; ``apply_effects`` changes it, and is
the same code the journal replay uses, so a rebuilt shard equals the live one.

One concept, kept in one module on purpose (over 400 lines): every fare rule of the city,
so a reader checks the whole table of rules against docs/fares.md in one place.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .cards import App, CardState, issuer_of
from .merchant_book import merchant_at
from .money import percent_of_fen
from .purses import DEPOSIT_SOURCES, N_PURSES, Purse, fund, funding_order
from .results import Result
from .tables import CompiledVersion, Concession, FareTables, Issuer
from .taps import BillClass, Tap, TapKind

MS_PER_MINUTE = 60_000
MS_PER_DAY = 86_400_000
_MODE: dict[int, str] = {
    TapKind.BUS: "bus", TapKind.WATER_BUS: "water_bus", TapKind.BIKE_RENT: "bike", TapKind.BIKE_RETURN: "bike",
    TapKind.PARKING_ENTRY: "parking", TapKind.PARKING_EXIT: "parking", TapKind.TAXI: "taxi",
    TapKind.PETROL: "petrol", TapKind.MERCHANT: "merchant", TapKind.PARK_ENTRY: "park",
    TapKind.LIBRARY: "library", TapKind.MEDICAL: "medical",
}
_OK = int(Result.OK)
_INSUFFICIENT_FUNDS = int(Result.INSUFFICIENT_FUNDS)
_BUS = int(TapKind.BUS)
_BIKE_RENT, _BIKE_RETURN = int(TapKind.BIKE_RENT), int(TapKind.BIKE_RETURN)
_PARKING_ENTRY, _PARKING_EXIT = int(TapKind.PARKING_ENTRY), int(TapKind.PARKING_EXIT)
_TWO_TAP = frozenset((_BIKE_RENT, _BIKE_RETURN, _PARKING_ENTRY, _PARKING_EXIT))
_DEPOSIT = int(Purse.DEPOSIT)
_EPURSE = int(Purse.EPURSE)
_ALLOWANCE = int(Purse.ALLOWANCE)
_BILL_CLASS_NAMES = {int(c): c.name.lower() for c in BillClass if c != BillClass.NONE}
_MERCHANT = int(TapKind.MERCHANT)
_APP_LIBRARY, _APP_MEDICAL, _APP_MEMBER = int(App.LIBRARY), int(App.MEDICAL), int(App.MERCHANT_MEMBER)
# The purses a payment may use, built once (see ``_usable``): always e-purse, general, medical;
# the allowance until it expires; vouchers at a merchant of a category they cover.
_ALWAYS = frozenset((Purse.EPURSE, Purse.GENERAL, Purse.MEDICAL))
_USABLE = {
    (False, False): _ALWAYS, (True, False): _ALWAYS | {Purse.ALLOWANCE},
    (False, True): _ALWAYS | {Purse.VOUCHER}, (True, True): _ALWAYS | {Purse.ALLOWANCE, Purse.VOUCHER},
}
LIBRARY_BORROW, LIBRARY_RETURN = 1, 2
RECENT_TERMINALS = 4  # anti-passback memory per card


@dataclass(slots=True)
class Decision:
    result: int
    fare_fen: int = 0  # paid by the holder
    base_fen: int = 0  # the price before card, pass and concession rules
    rules: tuple[str, ...] = ()
    deltas: Sequence[int] = (0,) * N_PURSES  # per purse, by Purse index
    fund_fen: int = 0
    version: int = 0
    concession: int = -1  # ride-limited concession used, for the ride counter
    day: int = 0  # local day of the tap (ride counters)
    passback: bool = False  # the mode keeps anti-passback memory

    @property
    def ok(self) -> bool:
        return self.result == Result.OK


def _refuse(result: Result, version: int = 0, *rules: str) -> Decision:
    return Decision(int(result), version=version, rules=rules)


def decide(tables: FareTables, card: CardState, tap: Tap) -> Decision:
    """The decision for a tap on an existing, active card (status is the ledger's business)."""
    ver = tables.at(tap.time_ms)
    if ver is None:
        return _refuse(Result.NO_FARE_TABLE)
    kind = tap.kind
    mode = _MODE.get(kind)
    if mode is None:
        return _refuse(Result.BAD_TAP if kind not in TapKind._value2member_map_ else Result.KIND_NOT_SUPPORTED,
                       ver.version)
    issuer_rule: Issuer | None = None
    issuer = issuer_of(card.card_no)
    if issuer != tables.home_issuer:
        issuer_rule = ver.issuers.get(issuer)
        if issuer_rule is None and ver.v.interop.accept_unlisted:
            issuer_rule = Issuer(True, ver.v.interop.unlisted_percent)
        if issuer_rule is None or not issuer_rule.accepted:
            return _refuse(Result.ISSUER_NOT_ACCEPTED, ver.version)
    if mode in ver.passback_modes and card.recent:
        last = card.recent.get(tap.terminal_id)
        # Late taps too: a tap timed shortly *before* a charged one is the same passage.
        if last is not None and abs(tap.time_ms - last) < ver.v.anti_passback_s * 1000:
            return _refuse(Result.PASSBACK, ver.version, f"anti_passback {ver.v.anti_passback_s}s")
    d = _HANDLERS[kind](ver, card, tap, issuer_rule)
    if d.result == _OK:
        d.day = (tap.time_ms + ver.utc_offset_ms) // MS_PER_DAY
        d.passback = mode in ver.passback_modes
    return d


# -- transit ------------------------------------------------------------------------------
def _day(ver: CompiledVersion, time_ms: int) -> int:
    return (time_ms + ver.utc_offset_ms) // MS_PER_DAY


def _best_fare(ver: CompiledVersion, card: CardState, tap: Tap, mode: str, zone: str, base: int,
               card_percent: int, pass_ok: bool, issuer_rule: Issuer | None) -> tuple[int, tuple[str, ...], int]:
    """(fare, rules, ride-limited concession index) for a ride whose base price is ``base``."""
    if issuer_rule is not None:
        return percent_of_fen(base, issuer_rule.percent), (f"issuer {issuer_of(card.card_no)} {issuer_rule.percent}%",), -1
    found = ver.concession(mode, zone, card.category)
    used = 0
    if found is not None and found[1].rides_per_day and card.rides:
        used = card.rides.get((found[0], _day(ver, tap.time_ms)), 0)
    return _home_fare(ver, mode, base, card_percent, pass_ok, found, used)


def _home_fare(ver: CompiledVersion, mode: str, base: int, card_percent: int, pass_ok: bool,
               found: tuple[int, Concession] | None, used: int) -> tuple[int, tuple[str, ...], int]:
    """A home card's best fare: card percent, monthly pass, the concession ``found`` for its
    category (``used``: rides it already took today under that concession)."""
    fare = percent_of_fen(base, card_percent)
    rules: tuple[str, ...] = (f"{mode}.card_percent {card_percent}%",) if card_percent != 100 else (f"{mode}.fare",)
    limited = -1
    if pass_ok:
        pct = ver.v.bus.monthly_pass.percent
        pass_fare = percent_of_fen(base, pct)
        if pass_fare < fare:
            fare, rules = pass_fare, (f"monthly_pass {pct}%",)
    if found is not None:
        index, c = found
        if c.rides_per_day == 0 or used < c.rides_per_day:
            conc_fare = percent_of_fen(base, c.percent)
            if conc_fare < fare:
                fare = conc_fare
                rules = (f"concession[{index}] {c.category} {c.mode}/{c.zone} {c.percent}%",)
                limited = index if c.rides_per_day else -1
        else:
            rules = rules + (f"concession[{index}] limit {c.rides_per_day}/day reached",)
    return fare, rules, limited


def _pay(ver: CompiledVersion, card: CardState, tap: Tap, fare: int, base: int, rules: tuple[str, ...],
         concession: int = -1) -> Decision:
    if not fare:
        return Decision(_OK, 0, base, rules, [0] * N_PURSES, version=ver.version, concession=concession)
    order = funding_order(tap.kind, medical_from_purse=card.medical_from_purse)
    deltas = fund(card.purses, fare, order, _usable(card, tap, ver))
    if deltas is None:
        return Decision(_INSUFFICIENT_FUNDS, 0, base, rules, version=ver.version)
    return Decision(_OK, fare, base, rules, deltas, version=ver.version, concession=concession)


def _usable(card: CardState, tap: Tap, ver: CompiledVersion) -> frozenset[Purse]:
    t = tap.time_ms
    until = card.allowance_until_ms
    voucher = False
    if tap.kind == _MERCHANT and (card.voucher_until_ms == 0 or t < card.voucher_until_ms):
        merchant = merchant_at(ver, tap.route, t)
        voucher = merchant is not None and merchant.category in card.voucher_categories
    return _USABLE[until == 0 or t < until, voucher]


def _valid(window: tuple[int, int] | None, time_ms: int) -> bool:
    return window is not None and window[0] <= time_ms < window[1]


def _bus(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    route = tap.route
    if route <= 0:
        return _refuse(Result.BAD_TAP, ver.version)
    if issuer_rule is None and card.monthly_pass is None and ("bus", card.category) not in ver.concession_modes:
        # The common ride: a home card with no pass and no concession pays the card fare.
        fare = ver.bus_card_fare.get(route, ver.bus_default_card_fare)
        purses = card.purses
        if not purses[_ALLOWANCE] and purses[_EPURSE] >= fare:
            return Decision(_OK, fare, ver.bus_base.get(route, ver.v.bus.default_base_fen), ver.bus_card_rule,
                            (-fare, 0, 0, 0, 0, 0), version=ver.version)
    b = ver.v.bus
    base = ver.bus_base.get(route, b.default_base_fen)
    lo, hi, excluded = ver.pass_routes
    pass_ok = lo <= route <= hi and route not in excluded and _valid(card.monthly_pass, tap.time_ms)
    fare, rules, limited = _best_fare(ver, card, tap, "bus", ver.bus_zone.get(route, b.default_zone), base,
                                      b.card_percent, pass_ok, issuer_rule)
    return _pay(ver, card, tap, fare, base, rules, limited)


def _water_bus(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if tap.route <= 0:
        return _refuse(Result.BAD_TAP, ver.version)
    w = ver.v.water_bus
    base = ver.water_fen.get(tap.route, w.default_fen)
    fare, rules, limited = _best_fare(ver, card, tap, "water_bus", w.zone, base, 100, False, issuer_rule)
    return _pay(ver, card, tap, fare, base, rules, limited)


def home_ride_fare(ver: CompiledVersion, kind: int, route: int, category: int, has_pass: bool) -> int:
    """The fare of a home card's bus or water-bus ride on ``route`` (> 0) when it depends on
    nothing but the version, the route, the card's category and whether it holds a valid
    monthly pass: as ``_bus`` / ``_water_bus`` price it. -1 when a ride-limited concession
    applies (the price then depends on the rides taken today: the general path decides).
    The ledger's inline path memoizes it per version."""
    if kind == _BUS:
        b = ver.v.bus
        lo, hi, excluded = ver.pass_routes
        pass_ok = has_pass and lo <= route <= hi and route not in excluded
        mode, zone, base, card_percent = "bus", ver.bus_zone.get(route, b.default_zone), \
            ver.bus_base.get(route, b.default_base_fen), b.card_percent
    else:
        w = ver.v.water_bus
        pass_ok, mode, zone, base, card_percent = False, "water_bus", w.zone, ver.water_fen.get(route, w.default_fen), 100
    found = ver.concession(mode, zone, category)
    if found is not None and found[1].rides_per_day:
        return -1
    return _home_fare(ver, mode, base, card_percent, pass_ok, found, 0)[0]


# -- amount-priced: taxi, petrol, merchants ------------------------------------------------
def _amount_ok(ver: CompiledVersion, tap: Tap) -> bool:
    return 0 < tap.amount_fen <= ver.v.max_amount_fen


def _taxi_or_petrol(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if not _amount_ok(ver, tap):
        return _refuse(Result.BAD_TAP, ver.version)
    return _pay(ver, card, tap, tap.amount_fen, tap.amount_fen, (f"{_MODE[tap.kind]}.amount",))


def _merchant(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if not _amount_ok(ver, tap):
        return _refuse(Result.BAD_TAP, ver.version)
    pct = member_percent(ver, tap.route, card.apps, tap.time_ms)
    fare, rules = tap.amount_fen, ("merchant.amount",)
    if pct != 100:
        fare, rules = percent_of_fen(tap.amount_fen, pct), (f"merchant[{tap.route}] member {pct}%",)
    return _pay(ver, card, tap, fare, tap.amount_fen, rules)


def member_percent(ver: CompiledVersion, merchant_id: int, apps: int, time_ms: int) -> int:
    """The % of the amount a card with ``apps`` pays at a merchant at ``time_ms`` (100: no
    member discount)."""
    merchant = merchant_at(ver, merchant_id, time_ms)
    if merchant is not None and merchant.member_discount_percent and apps & _APP_MEMBER:
        return 100 - merchant.member_discount_percent
    return 100


# -- parks and libraries -------------------------------------------------------------------
def _park(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    park = ver.parks.get(tap.route)
    if park is None:
        return _refuse(Result.BAD_TAP, ver.version, f"park {tap.route} not in the table")
    if park.in_annual_pass and _valid(card.park_pass, tap.time_ms):
        return Decision(int(Result.OK), 0, park.ticket_fen, ("park_pass",), version=ver.version)
    if park.pass_only:
        return _refuse(Result.PASS_REQUIRED, ver.version, f"park[{tap.route}] pass_only")
    if issuer_rule is not None:  # visitors from other cities pay the ticket; no local concessions
        return _pay(ver, card, tap, park.ticket_fen, park.ticket_fen, (f"park[{tap.route}] ticket",))
    fare, rules, limited = _best_fare(ver, card, tap, "park", "*", park.ticket_fen, 100, False, None)
    return _pay(ver, card, tap, fare, park.ticket_fen, rules, limited)


def _library(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if not card.apps & _APP_LIBRARY:
        return _refuse(Result.APP_NOT_ENABLED, ver.version, "library not enabled")
    if tap.route not in (LIBRARY_BORROW, LIBRARY_RETURN):
        return _refuse(Result.BAD_TAP, ver.version)
    deposit = ver.v.library.deposit_fen
    # The deposit purse also holds an open bike rental's deposit; only the rest is the library's.
    library_held = card.purses[Purse.DEPOSIT] - (card.rental[2] if card.rental else 0)
    if tap.route == LIBRARY_RETURN or card.credit_good or library_held >= deposit or not deposit:
        rule = "library.deposit waived (credit)" if card.credit_good else "library.identity"
        return Decision(int(Result.OK), 0, 0, (rule,), version=ver.version)
    return _hold(ver, card, deposit, ("library.deposit held",))


def _hold(ver: CompiledVersion, card: CardState, deposit: int, rules: tuple[str, ...]) -> Decision:
    deltas = fund(card.purses, deposit, DEPOSIT_SOURCES)
    if deltas is None:
        return Decision(int(Result.INSUFFICIENT_FUNDS), 0, 0, rules, version=ver.version)
    deltas[Purse.DEPOSIT] = deposit
    return Decision(int(Result.OK), 0, 0, rules, deltas, version=ver.version)


# -- bikes and parking: two taps each --------------------------------------------------------
def _bike_rent(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if card.rental is not None:
        return _refuse(Result.RENTAL_OPEN, ver.version)
    if card.credit_good:
        return Decision(int(Result.OK), 0, 0, ("bike.free rental, deposit waived (credit)",), version=ver.version)
    return _hold(ver, card, ver.v.bike.deposit_fen, ("bike.deposit held",))


def _bike_return(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if card.rental is None:
        return _refuse(Result.NO_OPEN_RENTAL, ver.version)
    bike = ver.v.bike
    _dock, start_ms, deposit = card.rental
    minutes = _minutes(start_ms, tap.time_ms)
    charge = 0
    rules: tuple[str, ...] = (f"bike.free {bike.free_minutes} min",)
    if minutes > bike.free_minutes:
        hours = -(-(minutes - bike.free_minutes) // 60)
        charge = min(hours * bike.per_hour_fen, bike.max_charge_fen)
        rules = (f"bike.{hours} h x {bike.per_hour_fen} fen (cap {bike.max_charge_fen})",)
    base = charge  # the price before a concession
    if charge:
        found = ver.concession("bike", "*", card.category)
        if found is not None:
            charge = percent_of_fen(charge, found[1].percent)
            rules += (f"concession[{found[0]}] {found[1].category} {found[1].percent}%",)
    deltas = [0] * N_PURSES
    from_deposit = min(charge, deposit)
    deltas[Purse.DEPOSIT] = -deposit
    deltas[Purse.EPURSE] = deposit - from_deposit  # the rest of the deposit goes back
    rest = charge - from_deposit
    if rest:
        more = fund(card.purses, rest, funding_order(tap.kind), _usable(card, tap, ver))
        if more is None:
            return Decision(int(Result.INSUFFICIENT_FUNDS), 0, base, rules, version=ver.version)
        deltas = [a + b for a, b in zip(deltas, more, strict=True)]
    return Decision(int(Result.OK), charge, base, rules, deltas, version=ver.version)


def _parking_entry(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if card.parking is not None:
        return _refuse(Result.PARKING_SESSION_OPEN, ver.version)
    if tap.route <= 0:
        return _refuse(Result.BAD_TAP, ver.version)
    return Decision(int(Result.OK), 0, 0, ("parking.entry",), version=ver.version)


def parking_charge(tariff_free_min: int, first_hour_fen: int, per_hour_fen: int, daily_cap_fen: int,
                   minutes: int) -> int:
    """Free period, then the first hour, then each started hour; capped per started day."""
    days, rest = divmod(minutes, 24 * 60)
    cost = 0
    if rest > tariff_free_min:
        cost = min(first_hour_fen + max(0, -(-(rest - 60) // 60)) * per_hour_fen, daily_cap_fen)
    return days * daily_cap_fen + cost


def _parking_exit(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if card.parking is None:
        return _refuse(Result.NO_PARKING_SESSION, ver.version)
    lot, entry_ms = card.parking
    t = ver.lots.get(lot, ver.v.parking.default)
    minutes = _minutes(entry_ms, tap.time_ms)
    charge = parking_charge(t.free_minutes, t.first_hour_fen, t.per_hour_fen, t.daily_cap_fen, minutes)
    rules = (f"parking[{lot}] {minutes} min",)
    return _pay(ver, card, tap, charge, charge, rules)


def _minutes(start_ms: int, end_ms: int) -> int:
    return max(0, -(-(end_ms - start_ms) // MS_PER_MINUTE))


# -- health insurance ------------------------------------------------------------------------
def _medical(ver: CompiledVersion, card: CardState, tap: Tap, issuer_rule: Issuer | None) -> Decision:
    if not card.apps & _APP_MEDICAL or not card.insurance:
        return _refuse(Result.APP_NOT_ENABLED, ver.version, "health insurance not enabled")
    cls = _BILL_CLASS_NAMES.get(tap.bill_class)
    if cls is None or not _amount_ok(ver, tap):
        return _refuse(Result.BAD_TAP, ver.version)
    share = ver.v.medical.fund_percent.get(card.insurance, {}).get(cls, 0)
    fund_fen = percent_of_fen(tap.amount_fen, share)
    self_pay = tap.amount_fen - fund_fen
    rules = (f"medical {card.insurance}/{cls} fund {share}%",)
    d = _pay(ver, card, tap, self_pay, tap.amount_fen, rules)
    d.fund_fen = fund_fen if d.ok else 0
    return d


_HANDLERS: dict[int, Callable[[CompiledVersion, CardState, Tap, Issuer | None], Decision]] = {
    TapKind.BUS: _bus, TapKind.WATER_BUS: _water_bus, TapKind.TAXI: _taxi_or_petrol,
    TapKind.PETROL: _taxi_or_petrol, TapKind.MERCHANT: _merchant, TapKind.PARK_ENTRY: _park,
    TapKind.LIBRARY: _library, TapKind.BIKE_RENT: _bike_rent, TapKind.BIKE_RETURN: _bike_return,
    TapKind.PARKING_ENTRY: _parking_entry, TapKind.PARKING_EXIT: _parking_exit, TapKind.MEDICAL: _medical,
}


# -- effects: shared by the live path and the journal replay ---------------------------------
def apply_effects(card: CardState, kind: int, route: int, terminal_id: int, time_ms: int,
                  deltas: Sequence[int], concession: int, day: int, passback: bool) -> None:
    """Change the card as an OK decision says. ``day`` is the local day of the tap."""
    purses = card.purses
    for i, delta in enumerate(deltas):
        if delta:
            purses[i] += delta
    if kind in _TWO_TAP:
        if kind == _BIKE_RENT:
            card.rental = (route, time_ms, deltas[_DEPOSIT])
        elif kind == _BIKE_RETURN:
            card.rental = None
        elif kind == _PARKING_ENTRY:
            card.parking = (route, time_ms)
        else:
            card.parking = None
    if concession >= 0:
        rides = card.rides
        if rides is None:
            rides = card.rides = {}
        elif len(rides) > 8:  # keep today's counters only
            for key in [k for k in rides if k[1] < day]:
                del rides[key]
        rides[(concession, day)] = rides.get((concession, day), 0) + 1
    if passback:
        recent = card.recent
        if recent is None:
            recent = card.recent = {}
        last_ms = recent.get(terminal_id, -1)
        if time_ms > last_ms:  # a late tap must not move the memory back
            if last_ms >= 0:
                del recent[terminal_id]  # re-inserted last: the dict stays in charging order
            recent[terminal_id] = time_ms
        if len(recent) > RECENT_TERMINALS:
            del recent[next(iter(recent))]  # forget the terminal charged at least recently


def local_day(tables: FareTables, time_ms: int) -> int:
    ver = tables.at(time_ms) or tables.versions[0]
    return _day(ver, time_ms)


def passback_mode(tables: FareTables, kind: int, time_ms: int) -> bool:
    ver = tables.at(time_ms)
    return ver is not None and _MODE.get(kind) in ver.passback_modes


def passback_window_ms(ver: CompiledVersion, kind: int) -> int:
    """Anti-passback window of ``kind``'s mode under ``ver`` in ms; -1: the mode keeps no memory."""
    return ver.v.anti_passback_s * 1000 if _MODE.get(kind) in ver.passback_modes else -1
