"""The load lab's city (one scale factor from a test town to the megacity) and its tap mix.
Pure and seeded: no services, no clock."""

import dataclasses
import hashlib
import pickle
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import citycard.config.fare_table as fare_table_module
from citycard.config.fare_table import load_fare_tables
from citycard.domain.cards import (
    DEFAULT_APPS,
    HANGZHOU_ISSUER,
    App,
    CardState,
    CardStatus,
    Category,
    card_no_valid,
    issuer_of,
    make_card_no,
)
from citycard.domain.results import Result
from citycard.domain.rules import LIBRARY_BORROW, LIBRARY_RETURN, decide
from citycard.domain.shard import shard_of
from citycard.domain.tables import iso_to_ms
from citycard.domain.taps import BillClass, Tap, TapKind
from citycard.loadtest.city import (
    CARD_SEED_COLUMNS,
    FIRST_TERMINAL_ID,
    MEGACITY_CARDS,
    MEGACITY_TAPS_PER_DAY,
    MERCHANT_IDS,
    PARK_IDS,
    ROUTE_315,
    TERMINAL_KINDS,
    VISITOR_ISSUERS,
    WATER_BUS_ROUTES,
    CardNumbers,
    TerminalPlan,
    card_numbers,
    city_for_scale,
    home_card_numbers,
    iter_city_cards,
    plan_cards,
    plan_city_cards,
    plan_city_terminals,
    plan_terminals,
    terminal_tap_weights,
    visitor_card_numbers,
)
from citycard.loadtest.tapmix import AMOUNT_FEN, TapMaker, TapMix

TABLES = load_fare_tables(Path(fare_table_module.__file__).parent / "fares" / "hangzhou.toml")
NOON = iso_to_ms("2010-03-01T12:00:00+08:00")
NOW_MS = 1_700_000_000_000
ACCEPTED_VISITORS = {310000, 320100, 330200}
REFUSED_VISITORS = {110000}
PAIRS = {TapKind.BIKE_RENT: TapKind.BIKE_RETURN, TapKind.PARKING_ENTRY: TapKind.PARKING_EXIT}


# -- the demo city stays what it was -----------------------------------------------------------
def test_plan_cards_and_plan_terminals_are_unchanged_for_a_seed() -> None:
    """Fingerprints taken before the city model came: the demo's and tests' numbers hang on them."""
    cards = repr(plan_cards(50, 2, 5, now_ms=NOW_MS)).encode()
    terminals = repr(plan_terminals(10, 3)).encode()
    assert hashlib.sha256(cards).hexdigest() == "b71005644afe2d7e2128b433450faf1114cdf36fdfe1c8af123a0b28a9d5be71"
    assert hashlib.sha256(terminals).hexdigest() == "8b219612cdedec3f5836ec20f484e26f185d50405adf7ae3db57a4a6825acfa0"


def test_card_numbers_are_make_card_no() -> None:
    assert card_numbers(300) == [make_card_no(s) for s in range(1, 301)]
    rng = random.Random(1)
    for issuer in (HANGZHOU_ISSUER, *(i for i, _ in VISITOR_ISSUERS), 1, 999_999):
        numbers = CardNumbers(10**10 - 7, issuer, first_serial=5)
        for _ in range(500):
            i = rng.randrange(len(numbers))
            assert numbers[i] == make_card_no(5 + i, issuer)
        assert numbers[-1] == make_card_no(10**10 - 3, issuer)


def test_card_numbers_is_a_small_lazy_sequence() -> None:
    numbers = CardNumbers(1000, 320100, first_serial=11)
    assert len(numbers) == 1000 and list(numbers) == [make_card_no(s, 320100) for s in range(11, 1011)]
    assert numbers[2:5] == [make_card_no(s, 320100) for s in (13, 14, 15)]
    assert make_card_no(500, 320100) in numbers
    assert make_card_no(5, 320100) not in numbers  # serial below the range
    assert make_card_no(500, 310000) not in numbers  # another issuer
    assert make_card_no(500, 320100) + 1 not in numbers  # bad check digit
    with pytest.raises(IndexError):
        numbers[1000]
    big = CardNumbers(MEGACITY_CARDS)
    assert len(pickle.dumps(big)) < 200 and pickle.loads(pickle.dumps(big)) == big
    with pytest.raises(ValueError):
        CardNumbers(10, first_serial=10**10 - 5)


# -- the scaled city ----------------------------------------------------------------------------
def test_megacity_has_ten_million_cards_twenty_million_taps_and_500_routes() -> None:
    city = city_for_scale(1.0)
    assert (city.cards, city.taps_per_day, city.bus_routes) == (10_000_000, 20_000_000, 500)
    started = time.perf_counter()
    terminals = plan_city_terminals(city, seed=1)
    assert time.perf_counter() - started < 1.0
    assert len(terminals) == city.n_terminals and 25_000 <= city.n_terminals <= 40_000
    routes = {t.route for t in terminals if t.kind == TapKind.BUS}
    assert routes == set(range(1, 501)) and ROUTE_315 in routes
    assert city.visitor_cards == 200_000


def test_scale_one_thousandth_is_a_small_city() -> None:
    city = city_for_scale(0.001)
    assert (city.cards, city.taps_per_day) == (10_000, 20_000)
    assert city.visitor_cards == 200


@pytest.mark.parametrize("scale", [1e-7, 1e-5, 0.001])
def test_a_tiny_city_has_a_terminal_of_every_kind(scale: float) -> None:
    city = city_for_scale(scale)
    kinds = Counter(t.kind for t in plan_city_terminals(city, seed=2))
    assert set(kinds) == {int(k.kind) for k in TERMINAL_KINDS}
    assert all(n >= 1 for n in city.terminal_counts().values())
    assert city.cards >= 1 and city.taps_per_day >= 1
    assert all(n >= 1 for _, n in city.visitor_split())  # every interop rule exercised


def test_terminal_proportions_are_the_same_at_every_scale() -> None:
    mega = city_for_scale(1.0)
    for scale in (0.001, 0.01, 0.1, 0.5, 2.0):
        city = city_for_scale(scale)
        for k in TERMINAL_KINDS:
            n = getattr(city, k.field)
            assert abs(n - k.megacity * scale) <= 0.5 or (n == 1 and k.megacity * scale < 1), (scale, k)
        if scale >= 0.01:  # large enough that rounding is under 1 %
            assert city.taxis / city.buses == pytest.approx(mega.taxis / mega.buses, rel=0.01)
            assert city.merchant_pos / city.buses == pytest.approx(mega.merchant_pos / mega.buses, rel=0.01)
            assert city.cards / city.n_terminals == pytest.approx(mega.cards / mega.n_terminals, rel=0.01)


def test_seed_notes_proportions_at_scale_one() -> None:
    city = city_for_scale(1.0)
    assert city.taxis == pytest.approx(4_600 / 0.55 * 1.5, rel=0.01)  # the whole fleet, 1.5x 2009's
    assert city.merchant_pos == 900 * 5  # the alliance grew with the cards
    assert city.medical_desks // 4 == pytest.approx(175 * 1.5, rel=0.01)


def test_route_315_runs_once_there_are_315_routes() -> None:
    for scale in (0.001, 0.01, 0.02, 0.03, 0.05, 1.0):
        city = city_for_scale(scale)
        routes = {t.route for t in plan_city_terminals(city, seed=3) if t.kind == TapKind.BUS}
        assert routes == set(range(1, city.bus_routes + 1))
        assert (ROUTE_315 in routes) == (city.bus_routes >= 315)
        assert city.bus_routes == min(500, city.buses)


def test_plan_city_terminals_is_deterministic_per_seed() -> None:
    city = city_for_scale(0.05)  # more buses than routes, so the seed places some
    a, b, c = (plan_city_terminals(city, seed=s) for s in (7, 7, 8))
    assert a == b and a != c
    assert [t.terminal_id for t in a] == list(range(FIRST_TERMINAL_ID, FIRST_TERMINAL_ID + city.n_terminals))
    assert Counter(t.kind for t in a) == {int(k): n for k, n in city.terminal_counts().items()}


def test_terminals_use_ids_the_fare_table_prices() -> None:
    ver = TABLES.at(NOON)
    assert ver is not None
    terminals = plan_city_terminals(city_for_scale(0.01), seed=4)
    for t in terminals:
        if t.kind == TapKind.WATER_BUS:
            assert t.route in ver.water_fen
        elif t.kind == TapKind.PARK_ENTRY:
            assert t.route in ver.parks
        elif t.kind == TapKind.MERCHANT:
            assert t.route in ver.merchants
        elif t.kind in (TapKind.BUS, TapKind.BIKE_RENT, TapKind.PARKING_ENTRY):
            assert t.route >= 1
    assert set(WATER_BUS_ROUTES) <= set(ver.water_fen) and set(PARK_IDS) <= set(ver.parks)
    assert set(MERCHANT_IDS) <= set(ver.merchants)


def test_tap_weights_make_buses_the_busiest() -> None:
    city = city_for_scale(1.0)
    terminals = plan_city_terminals(city, seed=1)
    weights = terminal_tap_weights(terminals)
    by_kind: dict[int, float] = dict.fromkeys((int(k.kind) for k in TERMINAL_KINDS), 0.0)
    for t, w in zip(terminals, weights, strict=True):
        by_kind[t.kind] += w
    total = sum(by_kind.values())
    assert total == pytest.approx(MEGACITY_TAPS_PER_DAY, rel=0.05)
    assert 0.8 < by_kind[TapKind.BUS] / total < 0.95


def test_city_model_is_checked() -> None:
    city = city_for_scale(0.01)
    with pytest.raises(ValueError, match="bus_routes"):
        dataclasses.replace(city, bus_routes=city.buses + 1)
    with pytest.raises(ValueError, match="taxis"):
        dataclasses.replace(city, taxis=-1)
    with pytest.raises(ValueError, match="cards"):
        dataclasses.replace(city, cards=0)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1000.0):
        with pytest.raises(ValueError, match="scale"):
            city_for_scale(bad)
    assert dataclasses.replace(city, taxis=0).taxis == 0  # a city may do without a kind


# -- card rows ----------------------------------------------------------------------------------
def test_iter_city_cards_rows_chunks_and_issuers() -> None:
    city = city_for_scale(0.001)
    chunks = list(iter_city_cards(city, n_shards=3, seed=5, now_ms=NOW_MS, chunk_rows=1_000))
    assert all(1 <= len(c) <= 1_000 for c in chunks)
    rows = [r for c in chunks for r in c]
    assert len(rows) == city.cards + city.visitor_cards
    assert all(len(r) == len(CARD_SEED_COLUMNS) for r in rows)
    numbers = [r[0] for r in rows]
    assert len(set(numbers)) == len(numbers) and all(card_no_valid(n) for n in numbers)
    assert all(r[1] == shard_of(r[0], 3) for r in rows)
    assert numbers == list(home_card_numbers(city)) + visitor_card_numbers(city)
    home, visitors = rows[:city.cards], rows[city.cards:]
    assert home == plan_cards(city.cards, 3, 5, now_ms=NOW_MS)  # the same row builder
    assert {issuer_of(r[0]) for r in home} == {HANGZHOU_ISSUER}
    by_issuer = Counter(issuer_of(r[0]) for r in visitors)
    assert by_issuer == dict(city.visitor_split())
    assert set(by_issuer) == ACCEPTED_VISITORS | REFUSED_VISITORS
    assert all(r[2] == Category.ADULT and r[4] > 0 for r in visitors)
    assert plan_city_cards(city, 3, 5, now_ms=NOW_MS) == rows


def test_home_and_visitor_numbers_are_cheap_at_megacity_size() -> None:
    city = city_for_scale(1.0)
    started = time.perf_counter()
    home, visitors = home_card_numbers(city), visitor_card_numbers(city)
    assert time.perf_counter() - started < 2.0
    assert len(home) == MEGACITY_CARDS and home[-1] == make_card_no(MEGACITY_CARDS)
    assert len(visitors) == 200_000 and len(set(visitors)) == 200_000


# -- the tap mix ----------------------------------------------------------------------------------
def _maker(mix: TapMix | None = None, seed: int = 1, n_home: int = 2_000, **kw: int) -> TapMaker:
    city = city_for_scale(0.001)
    return TapMaker(CardNumbers(n_home), visitor_card_numbers(city), mix or TapMix(), random.Random(seed), **kw)


BUS = TerminalPlan(1001, int(TapKind.BUS), 42)


def _unknown(card_no: int) -> bool:
    return issuer_of(card_no) == HANGZHOU_ISSUER and card_no // 10 % 10**10 >= 9_000_000_000


def test_shares_are_respected() -> None:
    home = set(CardNumbers(2_000))
    visitors = set(visitor_card_numbers(city_for_scale(0.001)))
    hot = make_card_no(17)
    maker = _maker(TapMix(hot_card=hot, hot_share=0.3, visitor_share=0.1, unknown_share=0.05))
    taps = [maker.make(BUS, seq, NOW_MS + seq) for seq in range(1, 10_001)]
    n = len(taps)
    assert 0.27 <= sum(t.card == hot for t in taps) / n <= 0.33
    assert 0.08 <= sum(t.card in visitors for t in taps) / n <= 0.12
    unknown = [t.card for t in taps if t.card not in home and t.card not in visitors]
    assert 0.04 <= len(unknown) / n <= 0.06
    assert all(card_no_valid(c) and _unknown(c) for c in unknown)
    assert len(set(t.card for t in taps if t.card in home)) > 1_500  # spread over the city


def test_bus_taps_carry_the_terminal_route_and_nothing_else() -> None:
    maker = _maker()
    for seq in range(1, 200):
        tap = maker.make(TerminalPlan(1001, int(TapKind.BUS), seq), seq, NOW_MS + seq)
        assert (tap.seq, tap.time_ms, tap.kind, tap.route, tap.amount_fen, tap.bill_class) == (
            seq, NOW_MS + seq, TapKind.BUS, seq, 0, 0)


def test_amounts_and_ids_by_kind() -> None:
    maker = _maker()
    terminals = plan_city_terminals(city_for_scale(0.001), seed=1)
    for seq, plan in enumerate(terminals * 30, 1):
        tap = maker.make(plan, seq, NOW_MS)
        if tap.kind in AMOUNT_FEN:
            lo, hi = AMOUNT_FEN[tap.kind]
            assert lo <= tap.amount_fen < hi and tap.amount_fen > 0
        if tap.kind == TapKind.MEDICAL:
            assert tap.amount_fen > 0 and tap.bill_class in (BillClass.OUTPATIENT, BillClass.INPATIENT,
                                                              BillClass.PHARMACY)
        if tap.kind == TapKind.LIBRARY:
            assert tap.route in (LIBRARY_BORROW, LIBRARY_RETURN)
        elif tap.kind in (TapKind.MERCHANT, TapKind.WATER_BUS, TapKind.PARK_ENTRY, TapKind.BUS,
                          *PAIRS, *PAIRS.values()):
            assert tap.route == plan.route
        else:
            assert tap.route == 0
        if tap.kind not in AMOUNT_FEN and tap.kind != TapKind.MEDICAL:
            assert tap.amount_fen == 0 and tap.bill_class == 0


@pytest.mark.parametrize("max_open", [5, 10_000])
def test_pairs_close_only_what_was_opened(max_open: int) -> None:
    unknown_mix = TapMix(hot_card=make_card_no(3), hot_share=0.2, unknown_share=0.05, visitor_share=0.05)
    maker = _maker(unknown_mix, n_home=300, max_open_pairs=max_open)
    docks = [TerminalPlan(2000 + i, int(TapKind.BIKE_RENT), i + 1) for i in range(5)]
    lots = [TerminalPlan(3000 + i, int(TapKind.PARKING_ENTRY), i + 1) for i in range(5)]
    opened: dict[int, set[int]] = {TapKind.BIKE_RENT: set(), TapKind.PARKING_ENTRY: set()}
    closes: Counter[int] = Counter()
    rng = random.Random(9)
    for seq in range(1, 20_001):
        plan = rng.choice(docks + lots)
        tap = maker.make(plan, seq, NOW_MS + seq)
        assert tap.route == plan.route
        if tap.kind in PAIRS:
            assert tap.card not in opened[tap.kind] or max_open < 10_000  # only a forgotten one reopens
            if not _unknown(tap.card):  # an unknown card's entry is refused: nothing to close
                opened[tap.kind].add(tap.card)
        else:
            open_kind = next(k for k, v in PAIRS.items() if v == tap.kind)
            assert tap.card in opened[open_kind], "closed a pair that was never opened"
            opened[open_kind].discard(tap.card)
            closes[tap.kind] += 1
        assert all(n <= max_open for n in maker.open_pairs.values())
    assert closes[TapKind.BIKE_RETURN] > 3_000 and closes[TapKind.PARKING_EXIT] > 3_000


def test_a_card_with_a_pair_open_closes_it_rather_than_opening_another() -> None:
    hot = make_card_no(3)
    maker = _maker(TapMix(hot_card=hot, hot_share=1.0))
    dock = TerminalPlan(2000, int(TapKind.BIKE_RENT), 1)
    kinds = [maker.make(dock, seq, NOW_MS).kind for seq in range(1, 11)]
    assert kinds == [TapKind.BIKE_RENT, TapKind.BIKE_RETURN] * 5


@pytest.mark.parametrize("mix", [
    dict(hot_card=1, hot_share=-0.1), dict(visitor_share=1.5), dict(unknown_share=float("nan")),
    dict(hot_card=1, hot_share=0.5, visitor_share=0.4, unknown_share=0.2), dict(hot_share=0.1),
])
def test_invalid_shares_raise(mix: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="TapMix"):
        TapMix(**mix)  # type: ignore[arg-type]


def test_maker_needs_the_cards_its_mix_asks_for() -> None:
    with pytest.raises(ValueError, match="visitor"):
        TapMaker(CardNumbers(10), [], TapMix(visitor_share=0.1), random.Random(1))
    with pytest.raises(ValueError, match="home"):
        TapMaker([], [1], TapMix(visitor_share=0.5), random.Random(1))
    with pytest.raises(ValueError, match="max_open_pairs"):
        TapMaker(CardNumbers(10), [], TapMix(), random.Random(1), max_open_pairs=0)
    only_visitors = TapMaker([], visitor_card_numbers(city_for_scale(0.001)), TapMix(visitor_share=1.0),
                             random.Random(1))
    assert issuer_of(only_visitors.make(BUS, 1, NOW_MS).card) != HANGZHOU_ISSUER


def test_same_seed_same_taps() -> None:
    terminals = plan_city_terminals(city_for_scale(0.001), seed=1)
    runs = []
    for _ in range(2):
        maker = _maker(TapMix(hot_card=make_card_no(5), hot_share=0.1, unknown_share=0.01), seed=42)
        runs.append([maker.make(p, i, NOW_MS) for i, p in enumerate(terminals * 5, 1)])
    assert runs[0] == runs[1]


def _funded_card(tap: Tap, card_no: int) -> CardState:
    card = CardState(card_no, CardStatus.ACTIVE, Category.ADULT, 10_000_000,
                     apps=int(DEFAULT_APPS | App.LIBRARY | App.MEDICAL | App.MERCHANT_MEMBER),
                     insurance="employee", medical_from_purse=True, park_pass=(NOON - 86_400_000, NOON + 86_400_000))
    if tap.kind == TapKind.BIKE_RETURN:
        card.rental = (1, tap.time_ms - 20 * 60_000, 0)
    if tap.kind == TapKind.PARKING_EXIT:
        card.parking = (tap.route, tap.time_ms - 90 * 60_000)
    return card


def test_every_generated_tap_is_priced_by_the_default_fare_table() -> None:
    """Decided for a funded adult home card (with a rental or a parked car to close, where the
    tap closes one), no tap the city makes is BAD_TAP or KIND_NOT_SUPPORTED: all are OK."""
    terminals = plan_city_terminals(city_for_scale(0.01), seed=6)
    one_of_each = [next(t for t in terminals if t.kind == k.kind) for k in TERMINAL_KINDS]
    plans = one_of_each * 100 + random.Random(6).sample(terminals, 300) * 10
    maker = _maker(seed=6)
    seen: Counter[int] = Counter()
    for seq, plan in enumerate(plans, 1):
        item = maker.make(plan, seq, NOON + seq * 1_000)
        tap = Tap(plan.terminal_id, item.seq, item.card, item.time_ms, item.kind, route=item.route,
                  amount_fen=item.amount_fen, bill_class=item.bill_class)
        decision = decide(TABLES, _funded_card(tap, item.card), tap)
        assert decision.result not in (Result.BAD_TAP, Result.KIND_NOT_SUPPORTED), (item, decision)
        assert decision.result == Result.OK, (item, decision)
        seen[item.kind] += 1
    assert set(seen) == set(TapKind)  # every kind, both taps of each pair


def test_visitors_of_accepted_issuers_are_accepted_and_beijing_is_not() -> None:
    for card_no in visitor_card_numbers(city_for_scale(0.001)):
        tap = Tap(1001, 1, card_no, NOON, int(TapKind.BUS), route=42)
        result = decide(TABLES, _funded_card(tap, card_no), tap).result
        expected = Result.OK if issuer_of(card_no) in ACCEPTED_VISITORS else Result.ISSUER_NOT_ACCEPTED
        assert result == expected


def test_tapmix_loads_no_io_library() -> None:
    code = ("import sys, citycard.loadtest.tapmix; "
            "print(sorted(m for m in ('asyncio', 'asyncpg', 'ray', 'redis', 'uvloop', 'socket') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
