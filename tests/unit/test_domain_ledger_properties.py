"""Property tests of the ledger: random cards, random batches with retries and garbage taps.

Invariants: no negative balance, money conserved, deterministic, a retry never charges twice,
replaying the journal rebuilds the shard; and, with dedupe memory large enough to remember
everything, outcomes equal a simple reference model's.
"""

from dataclasses import dataclass
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.cards import CardState, CardStatus, Category
from citycard.domain.fares import FareTable
from citycard.domain.ledger import Ledger
from citycard.domain.results import DECIDED, Result
from citycard.domain.taps import (
    MAX_CARD_NO,
    MAX_SEQ,
    MAX_TERMINAL_ID,
    JournalRow,
    Outcome,
    Tap,
    TapKind,
)

NOW_MS = 1_700_000_000_000
UNBOUNDED = 1_000_000
FARES = FareTable(bus_route_base_fen={2: 150, 3: 0}, water_bus_route_fen={2: 500})

PROPERTY = settings(max_examples=200, deadline=None)

_CARD_NOS = st.integers(1, 8)  # taps use 0..10: some cards are unknown, 0 is out of range
_STATUS = st.sampled_from(list(CardStatus))
_HOW = st.sampled_from(["new", "retry", "other_card"])


@dataclass(frozen=True)
class Scenario:
    cards: tuple[tuple[int, int, int], ...]  # (card_no, status, balance_fen)
    batches: tuple[tuple[Tap, ...], ...]
    dedupe_limit: int

    def ledger(self, dedupe_limit: int | None = None) -> Ledger:
        ledger = Ledger(shard_id=0, fares=FARES, dedupe_limit=dedupe_limit or self.dedupe_limit)
        for card_no, status, balance_fen in self.cards:
            ledger.add_card(CardState(card_no, status, Category.ADULT, balance_fen))
        return ledger

    def opening(self) -> dict[int, int]:
        return {card_no: balance_fen for card_no, _, balance_fen in self.cards}

    def all_taps(self) -> list[Tap]:
        """Every distinct tap sent, in first-sent order."""
        return list(dict.fromkeys(tap for batch in self.batches for tap in batch))


_NEW_TAP = st.builds(
    Tap,
    terminal_id=st.one_of(st.integers(1, 3), st.sampled_from([0, -1])),
    seq=st.one_of(st.integers(1, 8), st.sampled_from([0, -1])),
    card_no=st.integers(0, 10),
    time_ms=st.one_of(st.integers(0, 10**13), st.just(-1)),
    kind=st.one_of(st.sampled_from(list(TapKind)), st.sampled_from([0, -1, 13, 255])),
    route=st.sampled_from([-1, 0, 1, 2, 3]),
    amount_fen=st.one_of(
        st.integers(-10, 3_000), st.sampled_from([1_000_000, 1_000_001, -(2**40)])
    ),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    card_nos = draw(st.lists(_CARD_NOS, max_size=6, unique=True))
    cards = tuple((card_no, draw(_STATUS), draw(st.integers(0, 2_000))) for card_no in card_nos)
    sent: list[Tap] = []
    batches = []
    for _ in range(draw(st.integers(1, 5))):
        batch = []
        for _ in range(draw(st.integers(0, 10))):
            how = draw(_HOW) if sent else "new"
            if how == "new":
                tap = draw(_NEW_TAP)
            else:
                tap = sent[draw(st.integers(0, len(sent) - 1))]
                if how == "other_card":
                    tap = Tap(
                        tap.terminal_id,
                        tap.seq,
                        draw(st.integers(0, 10)),
                        tap.time_ms,
                        tap.kind,
                        tap.route,
                        tap.amount_fen,
                    )
            sent.append(tap)
            batch.append(tap)
        batches.append(tuple(batch))
    dedupe_limit = draw(st.one_of(st.integers(1, 8), st.just(UNBOUNDED)))
    return Scenario(cards, tuple(batches), dedupe_limit)


def _valid_ids(tap: Tap) -> bool:
    return (
        1 <= tap.terminal_id <= MAX_TERMINAL_ID
        and 1 <= tap.seq <= MAX_SEQ
        and 1 <= tap.card_no <= MAX_CARD_NO
        and tap.time_ms >= 0
    )


def _run(ledger: Ledger, scenario: Scenario) -> tuple[list[list[Outcome]], list[JournalRow]]:
    outcomes: list[list[Outcome]] = []
    rows: list[JournalRow] = []
    for i, batch in enumerate(scenario.batches):
        got, new_rows = ledger.apply(list(batch), NOW_MS + i)
        assert len(got) == len(batch)
        outcomes.append(got)
        rows += new_rows
    return outcomes, rows


# -- invariants --------------------------------------------------------------------------
@PROPERTY
@given(scenarios())
def test_no_balance_ever_goes_negative(scenario: Scenario) -> None:
    ledger = scenario.ledger()
    for i, batch in enumerate(scenario.batches):
        outcomes, rows = ledger.apply(list(batch), NOW_MS + i)
        assert all(balance_fen >= 0 for balance_fen in ledger.balances().values())
        assert all(r.balance_after_fen >= 0 for r in rows if r.result == Result.OK)
        for outcome in outcomes:
            assert outcome.fare_fen >= 0
            if outcome.result == Result.OK:
                assert outcome.balance_fen >= 0
            else:
                assert outcome.fare_fen == 0


@PROPERTY
@given(scenarios())
def test_money_is_conserved(scenario: Scenario) -> None:
    ledger = scenario.ledger()
    outcomes, rows = _run(ledger, scenario)
    opening = scenario.opening()
    assert sum(opening.values()) == ledger.total_balance_fen() + sum(r.amount_fen for r in rows)
    # and card by card
    for card_no, balance_fen in ledger.balances().items():
        debited = sum(r.amount_fen for r in rows if r.card_no == card_no)
        assert opening[card_no] == balance_fen + debited
    # only first decisions charge: fares of fresh outcomes add up to the journal's
    fresh_fen = sum(o.fare_fen for batch in outcomes for o in batch if not o.replay)
    assert fresh_fen == sum(r.amount_fen for r in rows)


@PROPERTY
@given(scenarios())
def test_journal_rows_are_first_decisions_in_lsn_order(scenario: Scenario) -> None:
    ledger = scenario.ledger()
    outcomes, rows = _run(ledger, scenario)
    assert [r.lsn for r in rows] == list(range(1, len(rows) + 1))
    assert ledger.lsn == len(rows)
    keys = [(r.terminal_id, r.seq) for r in rows]
    assert len(keys) == len(set(keys))  # one row per (terminal, seq), ever
    assert all(r.result in DECIDED for r in rows)
    assert all(r.amount_fen == 0 for r in rows if r.result != Result.OK)
    assert all(r.applied_ms >= NOW_MS for r in rows)
    # a row for exactly the fresh decisions, in apply order; none for retries, duplicate or
    # too-old seqs, or ids out of range
    decided = [
        (tap.terminal_id, tap.seq, tap.card_no, o.result, o.fare_fen, o.balance_fen)
        for batch, got in zip(scenario.batches, outcomes, strict=True)
        for tap, o in zip(batch, got, strict=True)
        if not o.replay
        and o.result not in (Result.DUPLICATE_SEQ, Result.SEQ_TOO_OLD)
        and _valid_ids(tap)
    ]
    assert decided == [
        (r.terminal_id, r.seq, r.card_no, r.result, r.amount_fen, r.balance_after_fen) for r in rows
    ]


@PROPERTY
@given(scenarios())
def test_same_inputs_same_outputs(scenario: Scenario) -> None:
    first, second = scenario.ledger(), scenario.ledger()
    assert _run(first, scenario) == _run(second, scenario)
    assert first.balances() == second.balances()
    assert first.lsn == second.lsn
    assert first.dedupe_size() == second.dedupe_size()


@PROPERTY
@given(scenarios())
def test_a_retry_never_charges_twice(scenario: Scenario) -> None:
    ledger = scenario.ledger()
    _, rows = _run(ledger, scenario)
    first_row = {(r.terminal_id, r.seq): r for r in rows}
    balances, lsn = ledger.balances(), ledger.lsn

    retries = scenario.all_taps()
    outcomes, new_rows = ledger.apply(retries, NOW_MS + 100)
    assert new_rows == []
    assert ledger.balances() == balances
    assert ledger.lsn == lsn
    too_old = Outcome(Result.SEQ_TOO_OLD, 0, -1, False)
    for tap, outcome in zip(retries, outcomes, strict=True):
        assert outcome.fare_fen == 0 or outcome.replay
        row = first_row.get((tap.terminal_id, tap.seq))
        if row is None:  # never decided: out of range, or too old the first time too
            assert outcome.result in (Result.BAD_TAP, Result.SEQ_TOO_OLD), (tap, outcome)
            continue
        if row.card_no == tap.card_no:
            first = Outcome(row.result, row.amount_fen, row.balance_after_fen, True)
        else:
            first = Outcome(Result.DUPLICATE_SEQ, 0, -1, False)
        allowed = [first]
        if scenario.dedupe_limit != UNBOUNDED:
            allowed.append(too_old)
        if not _valid_ids(tap):  # another field out of range: BAD_TAP is a fine answer too
            allowed.append(Outcome(Result.BAD_TAP, 0, -1, False))
        assert outcome in allowed, (tap, row, outcome)


@PROPERTY
@given(scenarios())
def test_replaying_the_journal_rebuilds_the_shard(scenario: Scenario) -> None:
    original = scenario.ledger()
    _, rows = _run(original, scenario)
    recovered = scenario.ledger()
    for row in rows:
        recovered.replay(row, apply_effect=True)
    assert recovered.balances() == original.balances()
    assert recovered.lsn == original.lsn
    assert recovered.dedupe_size() == original.dedupe_size()
    # both answer retries and the taps after the restart the same way
    after = [*scenario.all_taps(), Tap(1, 100, 1, NOW_MS, TapKind.BUS, route=1)]
    assert recovered.apply(after, NOW_MS + 100) == original.apply(after, NOW_MS + 100)
    assert recovered.balances() == original.balances()


@PROPERTY
@given(scenarios())
def test_replay_without_effect_over_a_snapshot(scenario: Scenario) -> None:
    original = scenario.ledger()
    _, rows = _run(original, scenario)
    snapshot = Ledger(shard_id=0, fares=FARES, dedupe_limit=scenario.dedupe_limit)
    for card_no, status, _ in scenario.cards:
        snapshot.add_card(
            CardState(card_no, status, Category.ADULT, original.cards[card_no].balance_fen)
        )
    for row in rows:
        snapshot.replay(row, apply_effect=False)
    assert snapshot.balances() == original.balances()
    assert snapshot.lsn == original.lsn
    retries = scenario.all_taps()
    assert snapshot.apply(retries, NOW_MS + 100) == original.apply(retries, NOW_MS + 100)


# -- against a reference model -----------------------------------------------------------
def _model_fare(tap: Tap) -> tuple[Result, int]:
    if tap.kind == TapKind.BUS:
        if tap.route < 1:
            return Result.BAD_TAP, 0
        base = {2: 150, 3: 0}.get(tap.route, 200)
        exact = Fraction(base * 91, 100)
        return Result.OK, int(exact) + (1 if exact - int(exact) >= Fraction(1, 2) else 0)
    if tap.kind == TapKind.WATER_BUS:
        if tap.route < 1:
            return Result.BAD_TAP, 0
        return Result.OK, {2: 500}.get(tap.route, 300)
    if tap.kind in (TapKind.TAXI, TapKind.MERCHANT, TapKind.PETROL):
        if 1 <= tap.amount_fen <= 1_000_000:
            return Result.OK, tap.amount_fen
        return Result.BAD_TAP, 0
    if tap.kind in set(TapKind):
        return Result.KIND_NOT_SUPPORTED, 0
    return Result.BAD_TAP, 0


_ModelRow = tuple[int, int, int, int]  # lsn, result, amount_fen, balance_after_fen


def _model(scenario: Scenario) -> tuple[list[tuple[Outcome, ...]], list[_ModelRow], dict[int, int]]:
    """Allowed outcomes per tap (batches flattened), journal rows and closing balances, for a
    ledger that remembers every decision."""
    balance = scenario.opening()
    status = {card_no: s for card_no, s, _ in scenario.cards}
    first: dict[tuple[int, int], tuple[int, Outcome]] = {}
    allowed: list[tuple[Outcome, ...]] = []
    rows: list[_ModelRow] = []
    bad_tap = Outcome(Result.BAD_TAP, 0, -1, False)
    for tap in (tap for batch in scenario.batches for tap in batch):
        key = (tap.terminal_id, tap.seq)
        if key in first:
            card_no, outcome = first[key]
            if card_no == tap.card_no:
                answer = outcome._replace(replay=True)
            else:
                answer = Outcome(Result.DUPLICATE_SEQ, 0, -1, False)
            # a tap with a used (terminal, seq) and another field out of range: either the
            # dedupe answer or BAD_TAP; nothing is charged either way
            allowed.append((answer,) if _valid_ids(tap) else (answer, bad_tap))
            continue
        if not _valid_ids(tap):
            allowed.append((bad_tap,))
            continue
        if tap.card_no not in balance:
            outcome = Outcome(Result.CARD_UNKNOWN, 0, -1, False)
        elif status[tap.card_no] == CardStatus.BLOCKED:
            outcome = Outcome(Result.CARD_BLOCKED, 0, balance[tap.card_no], False)
        elif status[tap.card_no] == CardStatus.CANCELLED:
            outcome = Outcome(Result.CARD_CANCELLED, 0, balance[tap.card_no], False)
        else:
            result, fare_fen = _model_fare(tap)
            if result == Result.OK and fare_fen > balance[tap.card_no]:
                result, fare_fen = Result.INSUFFICIENT_FUNDS, 0
            balance[tap.card_no] -= fare_fen
            outcome = Outcome(result, fare_fen, balance[tap.card_no], False)
        first[key] = (tap.card_no, outcome)
        rows.append((len(rows) + 1, outcome.result, outcome.fare_fen, outcome.balance_fen))
        allowed.append((outcome,))
    return allowed, rows, balance


@PROPERTY
@given(scenarios())
def test_matches_the_reference_model_when_dedupe_remembers_everything(
    scenario: Scenario,
) -> None:
    ledger = scenario.ledger(dedupe_limit=UNBOUNDED)
    outcomes, rows = _run(ledger, scenario)
    allowed, expected_rows, expected_balances = _model(scenario)
    taps = [tap for batch in scenario.batches for tap in batch]
    got = [o for batch in outcomes for o in batch]
    for tap, outcome, ok in zip(taps, got, allowed, strict=True):
        assert outcome in ok, (tap, outcome, ok)
    assert [(r.lsn, r.result, r.amount_fen, r.balance_after_fen) for r in rows] == expected_rows
    assert ledger.balances() == expected_balances
