"""The city's fare rules, by example with the seed's own numbers, and by property.

``decide`` reads a card and never changes it; rules that count (concession rides, open bike
rentals and parking sessions, deposits, anti-passback) are exercised through ``Ledger.apply``.
"""

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import citycard.config.fare_table as fare_table_module
from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import App, CardState, CardStatus, Category, make_card_no
from citycard.domain.ledger import Ledger
from citycard.domain.purses import N_PURSES, Purse, fund, funding_order
from citycard.domain.results import Result
from citycard.domain.rules import Decision, decide, parking_charge
from citycard.domain.tables import FareTables, iso_to_ms, parse_tables
from citycard.domain.taps import BillClass, JournalRow, Outcome, Tap, TapKind

T = shipped_tables()
NOON = iso_to_ms("2010-03-01T12:00:00+08:00")  # a Monday, local time
S = 1_000
MIN = 60 * S
HOUR = 60 * MIN
DAY = 24 * HOUR
HANGZHOU, SHANGHAI, NINGBO, SUZHOU = 330100, 310000, 330200, 320500
SHIPPED = Path(fare_table_module.__file__).parent / "fares" / "hangzhou.toml"
SWITCH_ISO = "2025-01-01T00:00:00+08:00"
SWITCH = iso_to_ms(SWITCH_ISO)
E, G, V, A, M, D = (Purse.EPURSE, Purse.GENERAL, Purse.VOUCHER, Purse.ALLOWANCE, Purse.MEDICAL,
                    Purse.DEPOSIT)


def _card(serial: int = 1, *, epurse: int = 100_000, category: int = Category.ADULT,
          issuer: int = HANGZHOU, purses: dict[Purse, int] | None = None, **kw: Any) -> CardState:
    ps = None
    if purses is not None:
        ps = [0] * N_PURSES
        for p, fen in purses.items():
            ps[p] = fen
    return CardState(make_card_no(serial, issuer), CardStatus.ACTIVE, category, epurse, purses=ps, **kw)


def _tap(card: CardState, kind: int, route: int = 0, *, t: int = NOON, amount: int = 0,
         terminal: int = 1, seq: int = 1, bill: int = 0) -> Tap:
    return Tap(terminal, seq, card.card_no, t, kind, route=route, amount_fen=amount, bill_class=bill)


def _deltas(**by_purse: int) -> list[int]:
    out = [0] * N_PURSES
    for name, fen in by_purse.items():
        out[Purse[name.upper()]] = fen
    return out


class Shard:
    """A one-card ledger that numbers taps itself (distinct seqs, terminal chosen per tap)."""

    def __init__(self, *cards: CardState, tables: FareTables = T) -> None:
        self.ledger = Ledger(0, tables)
        for c in cards:
            self.ledger.add_card(c)
        self.seq = 0
        self.rows: list[JournalRow] = []

    def tap(self, card: CardState, kind: int, route: int = 0, *, t: int = NOON, amount: int = 0,
            terminal: int = 1, bill: int = 0, now: int | None = None) -> tuple[Outcome, JournalRow]:
        self.seq += 1
        tap = _tap(card, kind, route, t=t, amount=amount, terminal=terminal, seq=self.seq, bill=bill)
        outcomes, rows = self.ledger.apply([tap], t if now is None else now)
        assert len(outcomes) == 1 and len(rows) == 1
        self.rows.extend(rows)
        return outcomes[0], rows[0]


def _row_deltas(row: JournalRow) -> list[int]:
    return [row.d_epurse, row.d_general, row.d_voucher, row.d_allowance, row.d_medical, row.d_deposit]


# -- bus: card fare 91 %, monthly pass 50 % on routes 1-499 except 315 ----------------------------
MONTH = (NOON - 10 * DAY, NOON + 20 * DAY)


@pytest.mark.parametrize(
    ("route", "with_pass", "base", "fare", "rule"),
    [
        (1, False, 200, 182, "bus.card_percent 91%"),
        (1, True, 200, 100, "monthly_pass 50%"),
        (315, False, 200, 182, "bus.card_percent 91%"),
        (315, True, 200, 182, "bus.card_percent 91%"),
        (499, False, 300, 273, "bus.card_percent 91%"),
        (499, True, 300, 150, "monthly_pass 50%"),
        (500, False, 400, 364, "bus.card_percent 91%"),
        (500, True, 400, 364, "bus.card_percent 91%"),
        (42, False, 200, 182, "bus.card_percent 91%"),  # unlisted route: the default base
        (42, True, 200, 100, "monthly_pass 50%"),
    ],
)
def test_bus_fares(route: int, with_pass: bool, base: int, fare: int, rule: str) -> None:
    card = _card(monthly_pass=MONTH if with_pass else None)
    d = decide(T, card, _tap(card, TapKind.BUS, route))
    assert (d.result, d.base_fen, d.fare_fen, d.rules, d.version) == (Result.OK, base, fare, (rule,), 1)
    assert list(d.deltas) == _deltas(epurse=-fare)
    assert card.purses == [100_000, 0, 0, 0, 0, 0]  # decide does not change the card


@pytest.mark.parametrize(
    ("t", "fare"),
    [
        (MONTH[0] - 1, 182),  # before the pass starts
        (MONTH[0], 100),  # from_ms is inside
        (MONTH[1] - 1, 100),
        (MONTH[1], 182),  # until_ms is outside
        (MONTH[1] + 40 * DAY, 182),
    ],
)
def test_monthly_pass_validity_window(t: int, fare: int) -> None:
    card = _card(monthly_pass=MONTH)
    assert decide(T, card, _tap(card, TapKind.BUS, 1, t=t)).fare_fen == fare


def test_card_fare_rounds_half_up() -> None:
    tables = parse_tables({"city": "X", "home_issuer": HANGZHOU, "versions": [
        {"version": 1, "effective_from": "2009-01-01T00:00:00+08:00",
         "bus": {"route_base_fen": {"7": 150, "8": 1}}}]})
    card = _card()
    assert decide(tables, card, _tap(card, TapKind.BUS, 7)).fare_fen == 137  # 136.5
    assert decide(tables, card, _tap(card, TapKind.BUS, 8)).fare_fen == 1  # 0.91


def test_bus_needs_a_route_and_the_transit_purses() -> None:
    card = _card(epurse=181, purses=None)
    assert decide(T, card, _tap(card, TapKind.BUS, 0)).result == Result.BAD_TAP
    assert decide(T, card, _tap(card, TapKind.BUS, 1)).result == Result.INSUFFICIENT_FUNDS
    # the general (online) account does not pay a bus fare
    rich_online = _card(purses={E: 100, G: 100_000})
    d = decide(T, rich_online, _tap(rich_online, TapKind.BUS, 1))
    assert d.result == Result.INSUFFICIENT_FUNDS and d.fare_fen == 0


def test_water_bus_per_route() -> None:
    card = _card()
    for route, fare in ((1, 300), (2, 500), (9, 300)):
        d = decide(T, card, _tap(card, TapKind.WATER_BUS, route))
        assert (d.result, d.fare_fen, d.rules) == (Result.OK, fare, ("water_bus.fare",))


# -- parks: annual pass free and unlimited within validity -----------------------------------------
PARK_PASS = (NOON - 100 * DAY, NOON + 100 * DAY)


@pytest.mark.parametrize(
    ("park", "t", "with_pass", "result", "fare", "rules"),
    [
        (1, NOON, True, Result.OK, 0, ("park_pass",)),
        (1, PARK_PASS[1], True, Result.OK, 1000, ("park.fare",)),  # pass expired: ticket
        (1, PARK_PASS[0] - 1, True, Result.OK, 1000, ("park.fare",)),
        (1, NOON, False, Result.OK, 1000, ("park.fare",)),
        (2, NOON, True, Result.OK, 4500, ("park.fare",)),  # not covered by the pass
        (3, NOON, True, Result.OK, 0, ("park_pass",)),  # pass-only gate, valid pass
        (3, NOON, False, Result.PASS_REQUIRED, 0, ("park[3] pass_only",)),
        (3, PARK_PASS[1] + DAY, True, Result.PASS_REQUIRED, 0, ("park[3] pass_only",)),
    ],
)
def test_parks(park: int, t: int, with_pass: bool, result: Result, fare: int,
               rules: tuple[str, ...]) -> None:
    card = _card(park_pass=PARK_PASS if with_pass else None)
    d = decide(T, card, _tap(card, TapKind.PARK_ENTRY, park, t=t))
    assert (d.result, d.fare_fen, d.rules) == (result, fare, rules)
    assert sum(d.deltas) == -fare


def test_park_pass_is_unlimited_and_counted() -> None:
    card = _card(park_pass=PARK_PASS)
    shard = Shard(card)
    for i in range(10):
        out, row = shard.tap(card, TapKind.PARK_ENTRY, 1, t=NOON + i * HOUR)
        assert (out.result, out.fare_fen, row.kind, row.route) == (Result.OK, 0, TapKind.PARK_ENTRY, 1)
    assert card.purses[E] == 100_000
    assert sum(1 for r in shard.rows if r.result == Result.OK and r.route == 1) == 10  # visitor count


def test_park_not_in_the_table_is_a_bad_tap() -> None:
    card = _card(park_pass=PARK_PASS)
    assert decide(T, card, _tap(card, TapKind.PARK_ENTRY, 99)).result == Result.BAD_TAP


# -- public bikes: free period, then per started hour; deposit unless good credit -------------------
@pytest.mark.parametrize(
    ("minutes", "charge", "rule"),
    [
        (1, 0, "bike.free 60 min"),
        (60, 0, "bike.free 60 min"),
        (61, 100, "bike.1 h x 100 fen (cap 2000)"),
        (120, 100, "bike.1 h x 100 fen (cap 2000)"),
        (121, 200, "bike.2 h x 100 fen (cap 2000)"),
        (60 + 25 * 60, 2000, "bike.25 h x 100 fen (cap 2000)"),
    ],
)
@pytest.mark.parametrize("credit_good", [True, False])
def test_bike_rental(minutes: int, charge: int, rule: str, credit_good: bool) -> None:
    card = _card(credit_good=credit_good, epurse=50_000)
    shard = Shard(card)
    out, row = shard.tap(card, TapKind.BIKE_RENT, 11)
    assert out.result == Result.OK and out.fare_fen == 0 and row.amount_fen == 0
    if credit_good:
        assert card.purses == [50_000, 0, 0, 0, 0, 0]
        assert _row_deltas(row) == [0] * N_PURSES
    else:
        assert card.purses == [30_000, 0, 0, 0, 0, 20_000]  # deposit held
        assert _row_deltas(row) == _deltas(epurse=-20_000, deposit=20_000)
    assert card.rental == (11, NOON, 0 if credit_good else 20_000)
    d = decide(T, card, _tap(card, TapKind.BIKE_RETURN, 12, t=NOON + minutes * MIN, seq=99))
    assert (d.result, d.fare_fen, d.rules) == (Result.OK, charge, (rule,))
    out, row = shard.tap(card, TapKind.BIKE_RETURN, 12, t=NOON + minutes * MIN)
    assert (out.result, out.fare_fen, row.amount_fen) == (Result.OK, charge, charge)
    assert card.purses == [50_000 - charge, 0, 0, 0, 0, 0]  # deposit released
    assert card.rental is None
    assert sum(_row_deltas(row)) == -charge


def test_bike_deposit_from_the_general_purse_and_refused_without_money() -> None:
    card = _card(credit_good=False, purses={E: 5_000, G: 50_000})
    d = decide(T, card, _tap(card, TapKind.BIKE_RENT, 1))
    assert d.ok and d.rules == ("bike.deposit held",)
    assert list(d.deltas) == _deltas(epurse=-5_000, general=-15_000, deposit=20_000)
    poor = _card(credit_good=False, purses={E: 19_999})
    assert decide(T, poor, _tap(poor, TapKind.BIKE_RENT, 1)).result == Result.INSUFFICIENT_FUNDS


def test_bike_credit_rule_and_two_tap_states() -> None:
    card = _card()
    shard = Shard(card)
    assert decide(T, card, _tap(card, TapKind.BIKE_RENT, 1)).rules == (
        "bike.free rental, deposit waived (credit)",)
    assert shard.tap(card, TapKind.BIKE_RETURN, 1)[0].result == Result.NO_OPEN_RENTAL
    assert shard.tap(card, TapKind.BIKE_RENT, 1)[0].result == Result.OK
    assert shard.tap(card, TapKind.BIKE_RENT, 2, t=NOON + MIN)[0].result == Result.RENTAL_OPEN
    assert shard.tap(card, TapKind.BIKE_RETURN, 3, t=NOON + 30 * MIN)[0].result == Result.OK
    assert shard.tap(card, TapKind.BIKE_RETURN, 3, t=NOON + 31 * MIN)[0].result == Result.NO_OPEN_RENTAL


def test_bike_charge_beyond_the_deposit_comes_from_the_purses() -> None:
    tables = parse_tables({"city": "X", "home_issuer": HANGZHOU, "versions": [
        {"version": 1, "effective_from": "2009-01-01T00:00:00+08:00",
         "bike": {"deposit_fen": 150, "per_hour_fen": 100, "max_charge_fen": 2000}}]})
    card = _card(credit_good=False, purses={E: 1_000})
    shard = Shard(card, tables=tables)
    assert shard.tap(card, TapKind.BIKE_RENT, 1)[0].result == Result.OK
    assert card.purses == [850, 0, 0, 0, 0, 150]
    out, row = shard.tap(card, TapKind.BIKE_RETURN, 1, t=NOON + 180 * MIN)  # 2 h past free: 200
    assert (out.result, row.amount_fen) == (Result.OK, 200)
    assert card.purses == [800, 0, 0, 0, 0, 0]
    assert sum(_row_deltas(row)) == -200


# -- parking: free period, first hour, later started hours, daily cap, per day ----------------------
@pytest.mark.parametrize(
    ("minutes", "fen"),
    [
        (0, 0), (15, 0),  # free period
        (16, 500), (60, 500),  # first hour
        (61, 800), (120, 800), (121, 1100),  # later started hours
        (600, 3200), (720, 3800), (780, 4000), (1439, 4000),  # daily cap
        (1440, 4000), (1440 + 120, 4800), (2 * 1440 + 61, 8800), (3 * 1440, 12000),  # multi-day
    ],
)
def test_parking_charge_default_tariff(minutes: int, fen: int) -> None:
    assert parking_charge(15, 500, 300, 4000, minutes) == fen


@pytest.mark.parametrize(("lot", "minutes", "fen"), [(1, 61, 800), (7, 61, 1300), (7, 14, 0), (7, 1000, 6000)])
def test_parking_session(lot: int, minutes: int, fen: int) -> None:
    card = _card()
    shard = Shard(card)
    assert shard.tap(card, TapKind.PARKING_EXIT, lot)[0].result == Result.NO_PARKING_SESSION
    out, row = shard.tap(card, TapKind.PARKING_ENTRY, lot)
    assert (out.result, out.fare_fen) == (Result.OK, 0)
    assert card.parking == (lot, NOON)
    assert shard.tap(card, TapKind.PARKING_ENTRY, lot, t=NOON + MIN)[0].result == Result.PARKING_SESSION_OPEN
    exit_tap = _tap(card, TapKind.PARKING_EXIT, lot, t=NOON + minutes * MIN, seq=999)
    assert decide(T, card, exit_tap).rules == (f"parking[{lot}] {minutes} min",)
    out, row = shard.tap(card, TapKind.PARKING_EXIT, lot, t=NOON + minutes * MIN)
    assert (out.result, out.fare_fen, row.amount_fen) == (Result.OK, fen, fen)
    assert card.parking is None
    assert card.purses[E] == 100_000 - fen


def test_parking_minutes_are_started_minutes() -> None:
    card = _card()
    card.parking = (1, NOON)
    d = decide(T, card, _tap(card, TapKind.PARKING_EXIT, 1, t=NOON + 15 * MIN + 1))
    assert d.fare_fen == 500 and d.rules == ("parking[1] 16 min",)


# -- taxis, petrol, merchants --------------------------------------------------------------------
def test_taxi_and_petrol_by_amount() -> None:
    card = _card()
    for kind, name in ((TapKind.TAXI, "taxi"), (TapKind.PETROL, "petrol")):
        d = decide(T, card, _tap(card, kind, amount=2_345))
        assert (d.result, d.fare_fen, d.rules) == (Result.OK, 2_345, (f"{name}.amount",))
        for bad in (0, -1, 1_000_001):
            assert decide(T, card, _tap(card, kind, amount=bad)).result == Result.BAD_TAP


@pytest.mark.parametrize(
    ("merchant", "member", "amount", "fare", "rule"),
    [
        (9001, True, 1000, 950, "merchant[9001] member 95%"),
        (9001, False, 1000, 1000, "merchant.amount"),
        (9002, True, 1000, 900, "merchant[9002] member 90%"),
        (9003, True, 1000, 1000, "merchant.amount"),  # no member discount there
        (9999, True, 1000, 1000, "merchant.amount"),  # not in the table
        (9001, True, 10, 10, "merchant[9001] member 95%"),  # 9.5 rounds half up
    ],
)
def test_merchant_member_discount(merchant: int, member: bool, amount: int, fare: int, rule: str) -> None:
    apps = int(App.EPURSE | App.ONLINE | (App.MERCHANT_MEMBER if member else 0))
    card = _card(apps=apps)
    d = decide(T, card, _tap(card, TapKind.MERCHANT, merchant, amount=amount))
    assert (d.result, d.fare_fen, d.base_fen, d.rules) == (Result.OK, fare, amount, (rule,))


# -- purses: vouchers, allowance, funding order ------------------------------------------------------
VOUCHER_UNTIL = NOON + DAY


def _voucher_card() -> CardState:
    return _card(purses={V: 5_000, E: 1_000, G: 10_000}, voucher_until_ms=VOUCHER_UNTIL,
                 voucher_categories=frozenset({"retail"}))


@pytest.mark.parametrize(
    ("merchant", "t", "amount", "deltas"),
    [
        (9001, NOON, 2_000, _deltas(voucher=-2_000)),  # retail, before expiry
        (9001, NOON, 6_000, _deltas(voucher=-5_000, epurse=-1_000)),  # split
        (9001, NOON, 7_000, _deltas(voucher=-5_000, epurse=-1_000, general=-1_000)),
        (9001, VOUCHER_UNTIL - 1, 2_000, _deltas(voucher=-2_000)),
        (9001, VOUCHER_UNTIL, 2_000, _deltas(epurse=-1_000, general=-1_000)),  # expired
        (9003, NOON, 2_000, _deltas(epurse=-1_000, general=-1_000)),  # dining: another category
        (9999, NOON, 500, _deltas(epurse=-500)),  # unknown merchant: no category
    ],
)
def test_voucher_purse(merchant: int, t: int, amount: int, deltas: list[int]) -> None:
    card = _voucher_card()
    d = decide(T, card, _tap(card, TapKind.MERCHANT, merchant, t=t, amount=amount))
    assert d.ok and list(d.deltas) == deltas and d.fare_fen == amount


def test_voucher_never_pays_transit() -> None:
    card = _card(purses={V: 5_000}, voucher_categories=frozenset({"retail"}))
    assert decide(T, card, _tap(card, TapKind.BUS, 1)).result == Result.INSUFFICIENT_FUNDS
    assert decide(T, card, _tap(card, TapKind.PETROL, amount=100)).result == Result.INSUFFICIENT_FUNDS


@pytest.mark.parametrize(
    ("kind", "route", "amount", "deltas"),
    [
        (TapKind.BUS, 1, 0, _deltas(allowance=-182)),
        (TapKind.WATER_BUS, 1, 0, _deltas(allowance=-300)),
        (TapKind.TAXI, 0, 500, _deltas(allowance=-500)),
        (TapKind.PETROL, 0, 500, _deltas(allowance=-500)),
        (TapKind.PETROL, 0, 1_500, _deltas(allowance=-1_000, epurse=-500)),
        (TapKind.MERCHANT, 9001, 500, _deltas(epurse=-500)),  # allowance: transit and fuel only
        (TapKind.PARK_ENTRY, 1, 0, _deltas(epurse=-1_000)),
    ],
)
def test_allowance_purse(kind: int, route: int, amount: int, deltas: list[int]) -> None:
    card = _card(purses={A: 1_000, E: 10_000})
    d = decide(T, card, _tap(card, kind, route, amount=amount))
    assert d.ok and list(d.deltas) == deltas


def test_allowance_expiry() -> None:
    card = _card(purses={A: 1_000, E: 10_000}, allowance_until_ms=NOON + HOUR)
    assert list(decide(T, card, _tap(card, TapKind.BUS, 1, t=NOON)).deltas) == _deltas(allowance=-182)
    assert list(decide(T, card, _tap(card, TapKind.BUS, 1, t=NOON + HOUR)).deltas) == _deltas(epurse=-182)


def test_funding_split_allowance_before_epurse_for_bus() -> None:
    card = _card(purses={A: 100, E: 1_000, G: 5_000})
    shard = Shard(card)
    out, row = shard.tap(card, TapKind.BUS, 1)
    assert (out.result, row.amount_fen) == (Result.OK, 182)
    assert (row.d_allowance, row.d_epurse, row.d_general) == (-100, -82, 0)
    assert card.purses == [918, 5_000, 0, 0, 0, 0]
    assert out.balance_fen == 918 == row.balance_after_fen


def test_funding_orders() -> None:
    assert funding_order(TapKind.BUS) == (A, E)
    assert funding_order(TapKind.PETROL) == (A, E, G)
    assert funding_order(TapKind.MERCHANT) == (V, E, G)
    assert funding_order(TapKind.MEDICAL) == (M,)
    assert funding_order(TapKind.MEDICAL, medical_from_purse=True) == (M, G, E)
    assert funding_order(999) == ()


def test_fund() -> None:
    purses = [100, 200, 300, 0, 0, 0]
    assert fund(purses, 250, (V, E)) == [0, 0, -250, 0, 0, 0]
    assert fund(purses, 350, (V, E)) == [-50, 0, -300, 0, 0, 0]
    assert fund(purses, 401, (V, E)) is None
    assert fund(purses, 150, (V, E, G), frozenset({E, G})) == [-100, -50, 0, 0, 0, 0]
    assert fund(purses, 0, (E,)) == [0] * N_PURSES
    assert purses == [100, 200, 300, 0, 0, 0]


# -- health insurance ----------------------------------------------------------------------------
MEDICAL_APPS = int(App.EPURSE | App.ONLINE | App.MEDICAL)


@pytest.mark.parametrize(
    ("purses", "from_purse", "result", "deltas"),
    [
        ({M: 5_000}, False, Result.OK, _deltas(medical=-2_000)),
        ({M: 500, G: 5_000}, True, Result.OK, _deltas(medical=-500, general=-1_500)),
        ({M: 500, G: 1_000, E: 5_000}, True, Result.OK, _deltas(medical=-500, general=-1_000, epurse=-500)),
        ({M: 500, G: 5_000, E: 5_000}, False, Result.INSUFFICIENT_FUNDS, _deltas()),
        ({M: 500, G: 500}, True, Result.INSUFFICIENT_FUNDS, _deltas()),
    ],
)
def test_medical_split(purses: dict[Purse, int], from_purse: bool, result: Result, deltas: list[int]) -> None:
    card = _card(purses=purses, apps=MEDICAL_APPS, insurance="employee", medical_from_purse=from_purse)
    opening = list(card.purses)
    shard = Shard(card)
    out, row = shard.tap(card, TapKind.MEDICAL, 5, amount=10_000, bill=BillClass.OUTPATIENT)
    assert out.result == result
    assert _row_deltas(row) == deltas
    if result == Result.OK:
        assert (row.amount_fen, row.fund_fen, row.request_fen) == (2_000, 8_000, 10_000)
        assert row.bill_class == BillClass.OUTPATIENT
    else:
        assert (row.amount_fen, row.fund_fen) == (0, 0)
        assert card.purses == opening
    assert [a + b for a, b in zip(opening, deltas, strict=True)] == card.purses


@pytest.mark.parametrize(
    ("insurance", "bill", "fund_fen"),
    [
        ("employee", BillClass.OUTPATIENT, 8_000), ("employee", BillClass.INPATIENT, 9_000),
        ("employee", BillClass.PHARMACY, 7_000), ("retired", BillClass.INPATIENT, 9_500),
        ("resident", BillClass.PHARMACY, 4_000), ("unknown-scheme", BillClass.OUTPATIENT, 0),
    ],
)
def test_medical_fund_share(insurance: str, bill: int, fund_fen: int) -> None:
    card = _card(purses={M: 100_000}, apps=MEDICAL_APPS, insurance=insurance)
    d = decide(T, card, _tap(card, TapKind.MEDICAL, 5, amount=10_000, bill=bill))
    assert (d.result, d.fund_fen, d.fare_fen) == (Result.OK, fund_fen, 10_000 - fund_fen)
    assert d.rules == (f"medical {insurance}/{bill.name.lower()} fund {fund_fen // 100}%",)


def test_medical_needs_the_app_insurance_and_a_bill_class() -> None:
    no_app = _card(purses={M: 100_000}, insurance="employee")
    assert decide(T, no_app, _tap(no_app, TapKind.MEDICAL, 5, amount=100, bill=1)).result == Result.APP_NOT_ENABLED
    uninsured = _card(purses={M: 100_000}, apps=MEDICAL_APPS)
    assert decide(T, uninsured, _tap(uninsured, TapKind.MEDICAL, 5, amount=100, bill=1)).result == \
        Result.APP_NOT_ENABLED
    ok = _card(purses={M: 100_000}, apps=MEDICAL_APPS, insurance="employee")
    assert decide(T, ok, _tap(ok, TapKind.MEDICAL, 5, amount=100, bill=0)).result == Result.BAD_TAP
    assert decide(T, ok, _tap(ok, TapKind.MEDICAL, 5, amount=0, bill=1)).result == Result.BAD_TAP


# -- concessions by (mode, zone, category), with ride limits per day -----------------------------------
def test_elderly_urban_free_four_rides_a_day_then_card_fare() -> None:
    card = _card(category=Category.ELDERLY)
    shard = Shard(card)
    for i in range(4):
        out, row = shard.tap(card, TapKind.BUS, 1, t=NOON + i * HOUR, terminal=100 + i)
        assert (out.result, out.fare_fen, row.concession) == (Result.OK, 0, 0)
    d = decide(T, card, _tap(card, TapKind.BUS, 1, t=NOON + 5 * HOUR, terminal=200, seq=9999))
    assert d.fare_fen == 182
    assert d.rules == ("bus.card_percent 91%", "concession[0] limit 4/day reached")
    out, row = shard.tap(card, TapKind.BUS, 1, t=NOON + 5 * HOUR, terminal=200)
    assert (out.fare_fen, row.concession) == (182, -1)
    # a new local day (midnight +08:00) starts a new count
    midnight = iso_to_ms("2010-03-02T00:00:00+08:00")
    assert shard.tap(card, TapKind.BUS, 1, t=midnight - 1, terminal=201)[0].fare_fen == 182
    out, row = shard.tap(card, TapKind.BUS, 1, t=midnight, terminal=202)
    assert (out.fare_fen, row.concession) == (0, 0)
    assert card.purses[E] == 100_000 - 2 * 182


def test_elderly_free_ride_rule_and_suburb_half_fare() -> None:
    card = _card(category=Category.ELDERLY)
    d = decide(T, card, _tap(card, TapKind.BUS, 1))
    assert (d.fare_fen, d.concession, d.rules) == (0, 0, ("concession[0] elderly bus/urban 0%",))
    d = decide(T, card, _tap(card, TapKind.BUS, 500))  # suburb, base 400
    assert (d.fare_fen, d.concession, d.rules) == (200, -1, ("concession[1] elderly bus/suburb 50%",))
    shard = Shard(card)
    for i in range(6):  # no daily limit in the suburbs
        assert shard.tap(card, TapKind.BUS, 500, t=NOON + i * HOUR)[0].fare_fen == 200


@pytest.mark.parametrize(
    ("category", "kind", "route", "fare", "rule"),
    [
        (Category.STUDENT, TapKind.BUS, 1, 100, "concession[3] student bus/* 50%"),
        (Category.STUDENT, TapKind.BUS, 500, 200, "concession[3] student bus/* 50%"),
        (Category.STUDENT, TapKind.WATER_BUS, 1, 300, "water_bus.fare"),  # student: bus only
        (Category.DISABLED, TapKind.BUS, 1, 0, "concession[2] disabled */* 0%"),
        (Category.DISABLED, TapKind.BUS, 500, 0, "concession[2] disabled */* 0%"),
        (Category.DISABLED, TapKind.WATER_BUS, 2, 0, "concession[2] disabled */* 0%"),
        (Category.DISABLED, TapKind.PARK_ENTRY, 2, 0, "concession[2] disabled */* 0%"),
        (Category.ADULT, TapKind.BUS, 1, 182, "bus.card_percent 91%"),
        (Category.ELDERLY, TapKind.WATER_BUS, 1, 300, "water_bus.fare"),
    ],
)
def test_concessions(category: int, kind: int, route: int, fare: int, rule: str) -> None:
    card = _card(category=category)
    d = decide(T, card, _tap(card, kind, route))
    assert (d.result, d.fare_fen, d.rules) == (Result.OK, fare, (rule,))


def test_disabled_bike_past_the_free_period_is_free() -> None:
    card = _card(category=Category.DISABLED)
    card.rental = (1, NOON, 0)
    d = decide(T, card, _tap(card, TapKind.BIKE_RETURN, 1, t=NOON + 3 * HOUR))
    assert d.ok and d.fare_fen == 0
    assert "concession[2] disabled 0%" in d.rules


def test_student_with_a_monthly_pass_pays_the_lower_fare_once() -> None:
    card = _card(category=Category.STUDENT, monthly_pass=MONTH)
    assert decide(T, card, _tap(card, TapKind.BUS, 1)).fare_fen == 100
    assert decide(T, card, _tap(card, TapKind.BUS, 315)).fare_fen == 100


def test_concession_with_any_mode_and_a_zone_applies() -> None:
    """BUG (tables.py CompiledVersion.concession): a concession with mode '*' and a specific zone
    is stored under ('*', zone, category) but the lookup only tries (mode, zone), (mode, '*') and
    ('*', '*'), so such a concession is silently never applied."""
    tables = parse_tables({"city": "X", "home_issuer": HANGZHOU, "versions": [
        {"version": 1, "effective_from": "2009-01-01T00:00:00+08:00",
         "bus": {"route_base_fen": {"500": 400}, "route_zone": {"500": "suburb"}},
         "concessions": [{"category": "elderly", "mode": "*", "zone": "suburb", "percent": 50}]}]})
    card = _card(category=Category.ELDERLY)
    d = decide(tables, card, _tap(card, TapKind.BUS, 500))
    assert d.fare_fen == 200  # got 364: the card fare


# -- anti-passback --------------------------------------------------------------------------------------
def test_anti_passback_window() -> None:
    card = _card()
    shard = Shard(card)
    assert shard.tap(card, TapKind.BUS, 1, terminal=7)[0].fare_fen == 182
    out, row = shard.tap(card, TapKind.BUS, 1, t=NOON + 29_999, terminal=7)
    assert (out.result, out.fare_fen, row.amount_fen) == (Result.PASSBACK, 0, 0)
    assert _row_deltas(row) == [0] * N_PURSES
    d = decide(T, card, _tap(card, TapKind.BUS, 1, t=NOON + 10 * S, terminal=7, seq=99))
    assert d.rules == ("anti_passback 30s",)
    assert shard.tap(card, TapKind.BUS, 1, t=NOON + S, terminal=8)[0].fare_fen == 182  # other terminal
    out, _ = shard.tap(card, TapKind.BUS, 1, t=NOON + 30 * S, terminal=7)  # window over
    assert (out.result, out.fare_fen) == (Result.OK, 182)
    assert card.purses[E] == 100_000 - 3 * 182


def test_anti_passback_other_cards_and_modes() -> None:
    a, b = _card(1), _card(2)
    shard = Shard(a, b)
    assert shard.tap(a, TapKind.BUS, 1, terminal=7)[0].result == Result.OK
    assert shard.tap(b, TapKind.BUS, 1, t=NOON + S, terminal=7)[0].result == Result.OK  # another card
    # merchants are not in anti_passback_modes: two purchases a second apart both pay
    assert shard.tap(a, TapKind.MERCHANT, 9003, t=NOON, amount=100, terminal=9)[0].fare_fen == 100
    assert shard.tap(a, TapKind.MERCHANT, 9003, t=NOON + S, amount=100, terminal=9)[0].fare_fen == 100
    # parks are: a pass holder tapping twice at the gate is not counted twice
    p = _card(3, park_pass=PARK_PASS)
    shard.ledger.add_card(p)
    assert shard.tap(p, TapKind.PARK_ENTRY, 1, terminal=11)[0].result == Result.OK
    assert shard.tap(p, TapKind.PARK_ENTRY, 1, t=NOON + 5 * S, terminal=11)[0].result == Result.PASSBACK


def test_anti_passback_memory_is_not_moved_back_by_a_late_tap() -> None:
    """BUG (rules.py apply_effects, `recent[terminal_id] = time_ms`): a late tap with an older
    time overwrites the newer time on that terminal, so a tap 10 s after the newest charged one is
    charged again. Taps at t=100 s, then (late) t=50 s, then t=110 s, same card and terminal:
    expected PASSBACK for the third, got OK (charged 182)."""
    card = _card()
    shard = Shard(card)
    assert shard.tap(card, TapKind.BUS, 1, t=NOON + 100 * S, terminal=7)[0].result == Result.OK
    assert shard.tap(card, TapKind.BUS, 1, t=NOON + 50 * S, terminal=7)[0].result == Result.OK
    out, _ = shard.tap(card, TapKind.BUS, 1, t=NOON + 110 * S, terminal=7)
    assert (out.result, out.fare_fen) == (Result.PASSBACK, 0)


def test_anti_passback_holds_for_a_late_tap_inside_the_window() -> None:
    """BUG (rules.py decide, `0 <= tap.time_ms - last < window`): a tap arriving late whose time
    is 25 s *before* an already charged tap on the same terminal is charged, while the same two
    taps arriving in time order give PASSBACK: the outcome depends on arrival order."""
    card = _card()
    shard = Shard(card)
    assert shard.tap(card, TapKind.BUS, 1, t=NOON + 100 * S, terminal=7)[0].result == Result.OK
    out, _ = shard.tap(card, TapKind.BUS, 1, t=NOON + 75 * S, terminal=7)
    assert (out.result, out.fare_fen) == (Result.PASSBACK, 0)


# -- cards of other issuers -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("issuer", "kind", "route", "result", "fare", "rules"),
    [
        (SHANGHAI, TapKind.BUS, 1, Result.OK, 200, ("issuer 310000 100%",)),
        (SHANGHAI, TapKind.BUS, 500, Result.OK, 400, ("issuer 310000 100%",)),
        (NINGBO, TapKind.BUS, 1, Result.OK, 190, ("issuer 330200 95%",)),
        (NINGBO, TapKind.BUS, 499, Result.OK, 285, ("issuer 330200 95%",)),
        (NINGBO, TapKind.WATER_BUS, 2, Result.OK, 475, ("issuer 330200 95%",)),
        (SUZHOU, TapKind.BUS, 1, Result.ISSUER_NOT_ACCEPTED, 0, ()),
        (SUZHOU, TapKind.MERCHANT, 9001, Result.ISSUER_NOT_ACCEPTED, 0, ()),
    ],
)
def test_other_issuers(issuer: int, kind: int, route: int, result: Result, fare: int,
                       rules: tuple[str, ...]) -> None:
    card = _card(issuer=issuer, monthly_pass=MONTH, category=Category.ELDERLY)
    d = decide(T, card, _tap(card, kind, route, amount=100))
    assert (d.result, d.fare_fen, d.rules) == (result, fare, rules)


def test_unlisted_issuers_accepted_when_the_table_says_so() -> None:
    tables = parse_tables({"city": "X", "home_issuer": HANGZHOU, "versions": [
        {"version": 1, "effective_from": "2009-01-01T00:00:00+08:00",
         "interop": {"accept_unlisted": True, "unlisted_percent": 120 // 2,
                     "issuers": {"310000": {"accepted": False}}}}]})
    suzhou, shanghai = _card(issuer=SUZHOU), _card(issuer=SHANGHAI)
    assert decide(tables, suzhou, _tap(suzhou, TapKind.BUS, 1)).fare_fen == 120
    assert decide(tables, shanghai, _tap(shanghai, TapKind.BUS, 1)).result == Result.ISSUER_NOT_ACCEPTED


# -- library ----------------------------------------------------------------------------------------------
LIB_APPS = int(App.EPURSE | App.ONLINE | App.LIBRARY)


def test_library_identity_and_deposit() -> None:
    disabled = _card(1)
    assert decide(T, disabled, _tap(disabled, TapKind.LIBRARY, 1)).result == Result.APP_NOT_ENABLED
    trusted = _card(2, apps=LIB_APPS)
    d = decide(T, trusted, _tap(trusted, TapKind.LIBRARY, 1))
    assert (d.result, d.fare_fen, d.rules) == (Result.OK, 0, ("library.deposit waived (credit)",))
    assert list(d.deltas) == [0] * N_PURSES
    assert decide(T, trusted, _tap(trusted, TapKind.LIBRARY, 3)).result == Result.BAD_TAP
    untrusted = _card(3, apps=LIB_APPS, credit_good=False, epurse=15_000)
    shard = Shard(untrusted)
    out, row = shard.tap(untrusted, TapKind.LIBRARY, 1)
    assert (out.result, out.fare_fen, row.amount_fen) == (Result.OK, 0, 0)
    assert _row_deltas(row) == _deltas(epurse=-10_000, deposit=10_000)
    assert untrusted.purses == [5_000, 0, 0, 0, 0, 10_000]
    d = decide(T, untrusted, _tap(untrusted, TapKind.LIBRARY, 1, t=NOON + HOUR, seq=99))
    assert d.rules == ("library.identity",) and list(d.deltas) == [0] * N_PURSES  # held once
    poor = _card(4, apps=LIB_APPS, credit_good=False, epurse=9_999)
    assert decide(T, poor, _tap(poor, TapKind.LIBRARY, 1)).result == Result.INSUFFICIENT_FUNDS
    assert decide(T, poor, _tap(poor, TapKind.LIBRARY, 2)).result == Result.OK  # a return


def test_library_deposit_is_not_waived_by_a_held_bike_deposit() -> None:
    """BUG (rules.py _library, `card.purses[Purse.DEPOSIT] >= deposit`): the deposit purse is
    shared with bike deposits, so a holder without good credit who has a bike out (20000 held)
    borrows with no library deposit held; when the bike comes back the deposit purse is empty
    and the library holds nothing. Expected 'library.deposit held' (deposit 30000), got
    'library.identity' (deposit 20000)."""
    card = _card(apps=LIB_APPS, credit_good=False)
    shard = Shard(card)
    assert shard.tap(card, TapKind.BIKE_RENT, 1)[0].result == Result.OK
    assert card.purses[D] == 20_000
    d = decide(T, card, _tap(card, TapKind.LIBRARY, 1, t=NOON + MIN, terminal=50, seq=99))
    assert d.rules == ("library.deposit held",)
    assert list(d.deltas) == _deltas(epurse=-10_000, deposit=10_000)


# -- versioning ------------------------------------------------------------------------------------------
def _two_versions() -> FareTables:
    raw = tomllib.loads(SHIPPED.read_text())
    raw["versions"].append({"version": 2, "effective_from": SWITCH_ISO, "bus": {"card_percent": 90}})
    return parse_tables(raw)


def test_version_in_force_at_the_taps_own_time() -> None:
    tables = _two_versions()
    card = _card()
    before = decide(tables, card, _tap(card, TapKind.BUS, 1, t=SWITCH - 1))
    after = decide(tables, card, _tap(card, TapKind.BUS, 1, t=SWITCH))
    assert (before.fare_fen, before.version, before.rules) == (182, 1, ("bus.card_percent 91%",))
    assert (after.fare_fen, after.version, after.rules) == (180, 2, ("bus.card_percent 90%",))
    route_499 = decide(tables, card, _tap(card, TapKind.BUS, 499, t=SWITCH))  # base merged from v1
    assert (route_499.base_fen, route_499.fare_fen) == (300, 270)
    pass_card = _card(monthly_pass=(SWITCH - DAY, SWITCH + DAY))
    assert decide(tables, pass_card, _tap(pass_card, TapKind.BUS, 1, t=SWITCH)).fare_fen == 100


def test_late_tap_is_priced_by_the_old_version() -> None:
    tables = _two_versions()
    card = _card()
    shard = Shard(card, tables=tables)
    out, row = shard.tap(card, TapKind.BUS, 1, t=SWITCH - MIN, now=SWITCH + 3 * DAY)
    assert (out.fare_fen, row.fare_version, row.applied_ms) == (182, 1, SWITCH + 3 * DAY)
    out, row = shard.tap(card, TapKind.BUS, 1, t=SWITCH + MIN, terminal=2, now=SWITCH + 3 * DAY)
    assert (out.fare_fen, row.fare_version) == (180, 2)


def test_tap_before_the_first_version() -> None:
    card = _card()
    first = iso_to_ms("2009-01-01T00:00:00+08:00")
    d = decide(T, card, _tap(card, TapKind.BUS, 1, t=first - 1))
    assert (d.result, d.fare_fen, d.version) == (Result.NO_FARE_TABLE, 0, 0)
    shard = Shard(card)
    out, row = shard.tap(card, TapKind.BUS, 1, t=first - 1, now=NOON)
    assert (out.result, row.result, row.amount_fen) == (Result.NO_FARE_TABLE, Result.NO_FARE_TABLE, 0)
    assert card.purses[E] == 100_000
    assert decide(T, card, _tap(card, TapKind.BUS, 1, t=first)).version == 1


def test_unknown_kind() -> None:
    card = _card()
    assert decide(T, card, _tap(card, 99, 1)).result == Result.BAD_TAP


def test_decision_defaults() -> None:
    d = Decision(int(Result.OK))
    assert d.ok and d.fare_fen == 0 and list(d.deltas) == [0] * N_PURSES and d.concession == -1


# -- properties: random cards and batches of every kind through Ledger.apply ---------------------------
PROPERTY = settings(max_examples=200, deadline=None)
BASE = SWITCH - 2 * HOUR  # taps straddle the version switch of the two-version table
TABLES2 = _two_versions()
SERIALS = (1, 2, 3, 4, 5)
ISSUERS = (HANGZHOU, HANGZHOU, HANGZHOU, NINGBO, SUZHOU)
KINDS = [*TapKind, TapKind.BIKE_RENT, TapKind.BIKE_RETURN, TapKind.BIKE_RETURN, TapKind.PARKING_ENTRY,
         TapKind.PARKING_EXIT, TapKind.PARKING_EXIT, TapKind.LIBRARY, TapKind.MEDICAL]  # two-tap kinds more
ROUTES = (0, 1, 2, 3, 7, 315, 499, 500, 800, 9001, 9002, 9003)


@dataclass(frozen=True)
class CardSpec:
    serial: int
    issuer: int
    category: int
    purses: tuple[int, ...]
    apps: int
    credit_good: bool
    insurance: str
    medical_from_purse: bool
    monthly_pass: tuple[int, int] | None
    park_pass: tuple[int, int] | None
    voucher_until_ms: int
    voucher_categories: frozenset[str]
    allowance_until_ms: int
    status: int

    def build(self) -> CardState:
        return CardState(
            make_card_no(self.serial, self.issuer), self.status, self.category, 0,
            purses=list(self.purses), apps=self.apps, credit_good=self.credit_good,
            insurance=self.insurance, medical_from_purse=self.medical_from_purse,
            monthly_pass=self.monthly_pass, park_pass=self.park_pass,
            voucher_until_ms=self.voucher_until_ms, voucher_categories=self.voucher_categories,
            allowance_until_ms=self.allowance_until_ms,
        )


_OFFSET = st.integers(-3 * HOUR // S, 6 * HOUR // S).map(lambda s: BASE + s * S)
_WINDOW = st.none() | st.tuples(_OFFSET, _OFFSET).map(lambda w: (min(w), max(w)))


def card_specs(serial: int) -> st.SearchStrategy[CardSpec]:
    return st.builds(
        CardSpec,
        serial=st.just(serial),
        issuer=st.just(ISSUERS[serial - 1]),
        category=st.sampled_from(list(Category)),
        purses=st.tuples(*[st.integers(0, 30_000)] * (N_PURSES - 1), st.sampled_from([0, 0, 5_000])),
        apps=st.integers(0, 31).map(lambda n: n | 31 if n % 2 else n),  # half: every app
        credit_good=st.booleans(),
        insurance=st.sampled_from(["", "employee", "retired", "resident", "other"]),
        medical_from_purse=st.booleans(),
        monthly_pass=_WINDOW,
        park_pass=_WINDOW,
        voucher_until_ms=st.just(0) | _OFFSET,
        voucher_categories=st.frozensets(st.sampled_from(["retail", "books", "dining"])),
        allowance_until_ms=st.just(0) | _OFFSET,
        status=st.integers(0, 9).map(lambda n: {7: CardStatus.BLOCKED, 8: CardStatus.CANCELLED}.get(
            n, CardStatus.ACTIVE)),
    )


@dataclass(frozen=True)
class Scenario:
    cards: tuple[CardSpec, ...]
    batches: tuple[tuple[Tap, ...], ...]
    dedupe_limit: int

    def ledger(self) -> tuple[Ledger, list[CardState]]:
        ledger = Ledger(0, TABLES2, self.dedupe_limit)
        cards = [spec.build() for spec in self.cards]
        for c in cards:
            ledger.add_card(c)
        return ledger, cards

    def opening_total(self) -> int:
        return sum(sum(spec.purses) for spec in self.cards)


def _tap_time(s: int) -> int:
    return BASE - 20 * 365 * DAY if s > 6 * HOUR // S else BASE + s * S  # rarely: before any table


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    serials = draw(st.lists(st.sampled_from(SERIALS), min_size=1, max_size=3, unique=True))
    cards = tuple(draw(card_specs(s)) for s in serials)
    known = [make_card_no(s.serial, s.issuer) for s in cards]
    card_nos = known * 4 + [make_card_no(9, HANGZHOU)]  # now and then a card the shard lacks
    new_taps = st.builds(
        Tap,
        terminal_id=st.integers(1, 4),
        seq=st.integers(1, 12),
        card_no=st.sampled_from(card_nos),
        time_ms=st.integers(-3 * HOUR // S, 6 * HOUR // S + 1).map(_tap_time),
        kind=st.sampled_from(KINDS),
        route=st.sampled_from(ROUTES),
        amount_fen=st.integers(0, 20_000),
        hotlisted=st.integers(0, 15).map(lambda n: n == 9),
        bill_class=st.sampled_from(list(BillClass)),
    )
    taps = draw(st.lists(new_taps, min_size=1, max_size=40))
    # batches of new taps, each followed by retries of the very same taps sent so far
    cuts = sorted(draw(st.lists(st.integers(0, len(taps)), max_size=3)))
    batches = []
    for lo, hi in zip([0, *cuts], [*cuts, len(taps)], strict=True):
        retries = draw(st.lists(st.integers(0, max(hi - 1, 0)), max_size=4)) if hi else []
        batches.append(tuple(taps[lo:hi]) + tuple(taps[i] for i in retries))
    return Scenario(cards, tuple(batches), draw(st.sampled_from([2, 5, 1_000_000])))


def _run(sc: Scenario) -> tuple[list[list[Outcome]], list[list[JournalRow]], list[list[int]], list[CardState]]:
    ledger, cards = sc.ledger()
    outs, rows, snapshots = [], [], []
    for i, batch in enumerate(sc.batches):
        o, r = ledger.apply(batch, BASE + 7 * HOUR + i)
        outs.append(o)
        rows.append(r)
        snapshots.append([p for c in cards for p in c.purses])
    return outs, rows, snapshots, cards


def _check_purses_and_money(sc: Scenario) -> None:
    ledger, cards = sc.ledger()
    opening = sc.opening_total()
    charged = 0
    for i, batch in enumerate(sc.batches):
        outcomes, rows = ledger.apply(batch, BASE + 7 * HOUR + i)
        assert len(outcomes) == len(batch)
        for c in cards:
            assert all(p >= 0 for p in c.purses), (c, batch)  # no purse ever goes negative
        for row in rows:
            assert sum(_row_deltas(row)) == -row.amount_fen, row  # deltas pay exactly the amount
            assert row.amount_fen >= 0 and row.fund_fen >= 0
            if row.result != Result.OK:
                assert row.amount_fen == 0 and _row_deltas(row) == [0] * N_PURSES
            charged += row.amount_fen
        # money conserved; held deposits are the holder's money
        assert sum(sum(c.purses) for c in cards) + charged == opening
        assert ledger.total_balance_fen() + charged == opening


def _check_deterministic(sc: Scenario) -> None:
    outs1, rows1, snaps1, cards1 = _run(sc)
    outs2, rows2, snaps2, cards2 = _run(sc)
    assert outs1 == outs2 and rows1 == rows2 and snaps1 == snaps2
    for a, b in zip(cards1, cards2, strict=True):
        assert (a.rental, a.parking, a.rides, a.recent) == (b.rental, b.parking, b.rides, b.recent)


def _check_retries(sc: Scenario) -> None:
    outs, rows, _, _ = _run(sc)
    keys = [(r.terminal_id, r.seq) for batch in rows for r in batch]
    assert len(keys) == len(set(keys))  # at most one journal row per (terminal, seq)
    first: dict[tuple[int, int], Tap] = {}
    for batch, outcomes in zip(sc.batches, outs, strict=True):
        for tap, out in zip(batch, outcomes, strict=True):
            key = (tap.terminal_id, tap.seq)
            if key in first:
                # answered from memory with the first outcome, or refused: never a new charge
                assert out.replay or out.fare_fen == 0, (tap, out)
                if out.replay:
                    assert first[key].card_no == tap.card_no
            else:
                first[key] = tap
    charged = sum(r.amount_fen for batch in rows for r in batch)
    assert charged == sum(o.fare_fen for batch in outs for o in batch if not o.replay)


@PROPERTY
@given(scenarios())
def test_ledger_invariants_over_random_cards_and_taps(sc: Scenario) -> None:
    """No purse negative; money conserved; each row's deltas sum to -amount; same inputs give
    the same outputs; a retried (terminal, seq) never charges twice."""
    _check_purses_and_money(sc)
    _check_deterministic(sc)
    _check_retries(sc)
