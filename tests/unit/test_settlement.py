"""Settlement inside a city, pure: commission rounding, lines, the window state machine, the
window's bounds and the bus-subsidy basis."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import Category
from citycard.domain.money import percent_of_fen
from citycard.domain.settlement import (
    CLOSE_GRACE_MS,
    Aggregate,
    RideGroup,
    SettleCode,
    close_step,
    commission_fen,
    full_fare_fen,
    line_of,
    lines_of,
    settle_step,
    subsidy_basis,
    when_digits,
    window_bounds,
)
from citycard.domain.taps import TapKind

TABLES = shipped_tables()
VER = TABLES.versions[-1]
OFFSET_MS = VER.utc_offset_ms
START_MS, END_MS = window_bounds("2026-12-07", OFFSET_MS)


def test_commission_rounds_down_to_the_fen() -> None:
    assert commission_fen(1_234_567, 150) == 18_518  # 18 518.505
    assert commission_fen(199, 50) == 0  # 0.995: the fraction stays with the counterparty
    assert commission_fen(200, 50) == 1
    assert commission_fen(10_001, 10_000) == 10_001
    assert commission_fen(0, 300) == 0


@pytest.mark.parametrize(("gross", "bp"), [(-1, 10), (10, -1), (10, 10_001), (True, 10), (1.5, 10)])
def test_commission_refuses_bad_input(gross: object, bp: int) -> None:
    with pytest.raises(ValueError):
        commission_fen(gross, bp)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**9), st.integers(0, 10**6),
                          st.integers(0, 10**9), st.integers(0, 10_000)), min_size=1, max_size=12))
def test_nets_and_commissions_add_up_to_gross(parts: list[tuple[int, int, int, int, int]]) -> None:
    aggs = [Aggregate(f"cp{i}", *p[:4]) for i, p in enumerate(parts)]
    lines = lines_of(aggs, {f"cp{i}": p[4] for i, p in enumerate(parts)})
    assert sum(ln.net_fen + ln.commission_fen for ln in lines) == sum(p[1] + p[3] for p in parts)
    assert len(lines) == len(parts)
    for ln in lines:
        p = parts[int(ln.counterparty_id[2:])]
        assert ln.gross_fen == ln.online_fen + ln.offline_fen == p[1] + p[3]
        assert ln.taps == p[0] + p[2]
        # floor: the commission is never more than the exact share, and within a fen of it
        assert ln.commission_fen * 10_000 <= ln.gross_fen * p[4] < (ln.commission_fen + 1) * 10_000


def test_lines_list_every_counterparty_and_refuse_strangers() -> None:
    lines = lines_of([Aggregate("bus-1", 3, 600, 1, 200)], {"bus-1": 100, "bike": 0})
    assert [ln.counterparty_id for ln in lines] == ["bike", "bus-1"]
    assert lines[0].taps == lines[0].gross_fen == 0
    assert (lines[1].gross_fen, lines[1].commission_fen, lines[1].net_fen) == (800, 8, 792)
    with pytest.raises(ValueError, match="unregistered"):
        lines_of([Aggregate("nobody", 1, 1)], {"bus-1": 100})
    with pytest.raises(ValueError):
        line_of(Aggregate("x", -1, 0), 0)


def test_visitors_rides_are_owed_and_kept_apart() -> None:
    """A visitor's ride is owed to the operator like any (the acquirer collects from the issuer):
    in the gross, the taps and the commission, and counted apart within online and offline."""
    ln = line_of(Aggregate("bus-1", 3, 600, 1, 200, visitor_online_taps=2, visitor_online_fen=350,
                           visitor_offline_taps=1, visitor_offline_fen=99), 150)
    assert (ln.taps, ln.gross_fen) == (7, 600 + 200 + 350 + 99)
    assert (ln.online_fen, ln.offline_fen, ln.visitor_online_fen, ln.visitor_offline_fen) == (950, 299, 350, 99)
    assert (ln.commission_fen, ln.net_fen) == (1249 * 150 // 10_000, 1249 - 1249 * 150 // 10_000)
    with pytest.raises(ValueError):
        line_of(Aggregate("x", visitor_offline_fen=-1), 0)


def test_window_state_machine() -> None:
    after_end = END_MS + CLOSE_GRACE_MS
    assert close_step("open", after_end, END_MS) == (SettleCode.OK, "closed")
    assert close_step("open", after_end - 1, END_MS) == (SettleCode.NOT_ENDED, "open")
    assert close_step("closed", after_end, END_MS) == (SettleCode.ALREADY, "closed")
    assert close_step("settled", after_end, END_MS) == (SettleCode.SETTLED_REFUSED, "settled")
    assert settle_step("closed") == (SettleCode.OK, "settled")
    assert settle_step("settled") == (SettleCode.ALREADY, "settled")
    assert settle_step("open") == (SettleCode.NOT_CLOSED, "open")
    with pytest.raises(ValueError):
        close_step("paid", after_end, END_MS)


def test_window_is_the_local_day() -> None:
    assert END_MS - START_MS == 86_400_000
    assert when_digits(START_MS, OFFSET_MS) == 20261207000000
    assert when_digits(END_MS - 1000, OFFSET_MS) == 20261207235959
    for bad in ("2026-13-01", "2026-12-7", "yesterday", "2026-12-07x", ""):
        with pytest.raises(ValueError):
            window_bounds(bad, OFFSET_MS)


def _group(category: int, taps: int, charged: int, kind: int = TapKind.BUS, route: int = 5) -> RideGroup:
    return RideGroup("bus-1", kind, route, category, 20_000, VER.version, taps, charged)


def test_subsidy_is_adult_card_fare_less_charged_for_concession_groups() -> None:
    full = full_fare_fen(VER, TapKind.BUS, 5)
    b = VER.v.bus
    assert full == percent_of_fen(VER.bus_base.get(5, b.default_base_fen), b.card_percent)
    rows = subsidy_basis(TABLES, [
        _group(Category.ELDERLY, 10, 0),  # free rides: the whole fare is the concession
        _group(Category.STUDENT, 4, 4 * (full // 2)),
        _group(Category.ADULT, 100, 100 * full),  # no concession category: not in the basis
        _group(-1, 3, 0),  # a card not in the city's table: not in the basis
        _group(Category.ELDERLY, 2, 0, kind=TapKind.TAXI),  # not a fare with concessions
    ], START_MS)
    by_cat = {r.category: r for r in rows}
    assert set(by_cat) == {Category.ELDERLY, Category.STUDENT}
    assert by_cat[Category.ELDERLY].concession_fen == 10 * full
    assert by_cat[Category.STUDENT].concession_fen == 4 * full - 4 * (full // 2)
    assert by_cat[Category.STUDENT].full_fen == 4 * full


def test_subsidy_merges_versions_and_never_goes_negative() -> None:
    full = full_fare_fen(VER, TapKind.WATER_BUS, 2)
    rows = subsidy_basis(TABLES, [
        RideGroup("ferry", TapKind.WATER_BUS, 2, Category.DISABLED, 1, VER.version, 2, 0),
        RideGroup("ferry", TapKind.WATER_BUS, 2, Category.DISABLED, 1, 0, 1, full + 50),  # offline, over full
    ], START_MS)
    assert len(rows) == 1
    assert (rows[0].taps, rows[0].charged_fen, rows[0].concession_fen) == (3, full + 50, 2 * full)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(1, 50), st.integers(0, 2000)), max_size=10))
def test_subsidy_total_is_full_less_charged_per_group(groups: list[tuple[int, int, int]]) -> None:
    full = full_fare_fen(VER, TapKind.BUS, 7)
    rows = subsidy_basis(TABLES, [RideGroup("b", TapKind.BUS, 7, c, d, VER.version, n, min(charged, n * full))
                                  for d, (c, n, charged) in enumerate(groups)], START_MS)
    assert sum(r.concession_fen for r in rows) == sum(n * full - min(ch, n * full) for _c, n, ch in groups)
