"""Fare table: (result, fare_fen) for a tap on an active card, before the balance check."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.fares import FareTable
from citycard.domain.results import Result
from citycard.domain.taps import Tap, TapKind

_AMOUNT_KINDS = (TapKind.TAXI, TapKind.MERCHANT, TapKind.PETROL)
_PRICED_KINDS = frozenset((TapKind.BUS, TapKind.WATER_BUS, *_AMOUNT_KINDS))
_UNPRICED_KINDS = tuple(k for k in TapKind if k not in _PRICED_KINDS)


def _tap(kind: int, route: int = 0, amount_fen: int = 0) -> Tap:
    return Tap(
        terminal_id=7, seq=1, card_no=1001, time_ms=0, kind=kind, route=route, amount_fen=amount_fen
    )


# -- bus ---------------------------------------------------------------------------------
def test_bus_card_fare_on_default_base_is_91_percent() -> None:
    assert FareTable().price(_tap(TapKind.BUS, route=12)) == (Result.OK, 182)


def test_bus_route_base_override_rounds_half_up() -> None:
    table = FareTable(bus_route_base_fen={5: 150, 6: 0, 7: 300})
    assert table.price(_tap(TapKind.BUS, route=5)) == (Result.OK, 137)  # 136.5 -> 137
    assert table.price(_tap(TapKind.BUS, route=6)) == (Result.OK, 0)
    assert table.price(_tap(TapKind.BUS, route=7)) == (Result.OK, 273)
    # a route without an override pays the default base
    assert table.price(_tap(TapKind.BUS, route=8)) == (Result.OK, 182)


def test_bus_uses_the_table_percent_and_default_base() -> None:
    table = FareTable(bus_card_percent=50, bus_default_base_fen=301)
    assert table.price(_tap(TapKind.BUS, route=1)) == (Result.OK, 151)  # 150.5 -> 151


def test_bus_ignores_amount_fen() -> None:
    assert FareTable().price(_tap(TapKind.BUS, route=1, amount_fen=999)) == (Result.OK, 182)


@pytest.mark.parametrize("route", [0, -1, -(2**31)])
def test_bus_route_zero_or_negative_is_bad_tap(route: int) -> None:
    assert FareTable().price(_tap(TapKind.BUS, route=route)) == (Result.BAD_TAP, 0)


# -- water bus ---------------------------------------------------------------------------
def test_water_bus_default_and_per_route() -> None:
    table = FareTable(water_bus_route_fen={3: 500})
    assert table.price(_tap(TapKind.WATER_BUS, route=3)) == (Result.OK, 500)
    assert table.price(_tap(TapKind.WATER_BUS, route=4)) == (Result.OK, 300)


def test_water_bus_is_not_discounted_by_bus_percent() -> None:
    table = FareTable(bus_card_percent=50, water_bus_default_fen=400)
    assert table.price(_tap(TapKind.WATER_BUS, route=1)) == (Result.OK, 400)


@pytest.mark.parametrize("route", [0, -5])
def test_water_bus_route_zero_or_negative_is_bad_tap(route: int) -> None:
    assert FareTable().price(_tap(TapKind.WATER_BUS, route=route)) == (Result.BAD_TAP, 0)


# -- amount-priced kinds -----------------------------------------------------------------
@pytest.mark.parametrize("kind", _AMOUNT_KINDS)
@pytest.mark.parametrize("amount_fen", [1, 2_350, 1_000_000])
def test_amount_kinds_charge_the_amount(kind: TapKind, amount_fen: int) -> None:
    assert FareTable().price(_tap(kind, amount_fen=amount_fen)) == (Result.OK, amount_fen)


@pytest.mark.parametrize("kind", _AMOUNT_KINDS)
@pytest.mark.parametrize("amount_fen", [0, -1, -1_000, 1_000_001, 2**40])
def test_amount_out_of_range_is_bad_tap(kind: TapKind, amount_fen: int) -> None:
    assert FareTable().price(_tap(kind, amount_fen=amount_fen)) == (Result.BAD_TAP, 0)


def test_max_amount_comes_from_the_table() -> None:
    table = FareTable(max_amount_fen=500)
    assert table.price(_tap(TapKind.MERCHANT, amount_fen=500)) == (Result.OK, 500)
    assert table.price(_tap(TapKind.MERCHANT, amount_fen=501)) == (Result.BAD_TAP, 0)


# -- kinds not priced here ---------------------------------------------------------------
def test_there_are_known_but_unpriced_kinds() -> None:
    assert TapKind.BIKE_RENT in _UNPRICED_KINDS
    assert TapKind.LIBRARY in _UNPRICED_KINDS


@pytest.mark.parametrize("kind", _UNPRICED_KINDS)
def test_known_but_unpriced_kind_is_not_supported(kind: TapKind) -> None:
    # route and amount look valid; the kind alone is the reason
    tap = _tap(kind, route=1, amount_fen=100)
    assert FareTable().price(tap) == (Result.KIND_NOT_SUPPORTED, 0)


@pytest.mark.parametrize("kind", [0, -1, 13, 99, 255, 2**31])
def test_unknown_kind_is_bad_tap(kind: int) -> None:
    tap = _tap(kind, route=1, amount_fen=100)
    assert FareTable().price(tap) == (Result.BAD_TAP, 0)


# -- the contract over any tap -----------------------------------------------------------
@settings(max_examples=200)
@given(
    kind=st.one_of(st.sampled_from(list(TapKind)), st.integers(-3, 300)),
    route=st.integers(-(2**31), 2**31),
    amount_fen=st.integers(-(2**40), 2**40),
)
def test_price_contract(kind: int, route: int, amount_fen: int) -> None:
    result, fare_fen = FareTable().price(_tap(kind, route=route, amount_fen=amount_fen))
    assert result in set(Result)
    assert result not in (Result.BUSY, Result.RETRY, Result.SEQ_TOO_OLD)
    assert isinstance(fare_fen, int)
    if result == Result.OK:
        assert 0 <= fare_fen <= 1_000_000
    else:
        assert fare_fen == 0


# -- loading -----------------------------------------------------------------------------
def test_from_empty_dict_is_the_default_table() -> None:
    assert FareTable.from_dict({}) == FareTable()


def test_from_dict_reads_toml_shaped_tables_with_string_keys() -> None:
    table = FareTable.from_dict(
        {
            "version": 3,
            "max_amount_fen": 50_000,
            "bus": {"card_percent": 90, "default_base_fen": 250, "route_base_fen": {"5": 150}},
            "water_bus": {"default_fen": 350, "route_fen": {"2": 600}},
        }
    )
    assert table.version == 3
    assert table.price(_tap(TapKind.BUS, route=5)) == (Result.OK, 135)
    assert table.price(_tap(TapKind.BUS, route=6)) == (Result.OK, 225)
    assert table.price(_tap(TapKind.WATER_BUS, route=2)) == (Result.OK, 600)
    assert table.price(_tap(TapKind.WATER_BUS, route=1)) == (Result.OK, 350)
    assert table.price(_tap(TapKind.TAXI, amount_fen=50_001)) == (Result.BAD_TAP, 0)
