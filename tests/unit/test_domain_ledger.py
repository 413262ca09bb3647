"""The shard's ledger state machine, by example: one result per tap, dedupe, journal, replay."""


import msgspec
import pytest

from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import (
    CardState,
    CardStatus,
    Category,
    encode_card,
    make_card_no,
    restore_card,
)
from citycard.domain.ledger import Ledger
from citycard.domain.ops import TopUp
from citycard.domain.purses import Purse
from citycard.domain.recovery import Rebuild
from citycard.domain.results import DECIDED, Result
from citycard.domain.tables import parse_tables
from citycard.domain.taps import MAX_SEQ, JournalRow, Outcome, Tap, TapKind
from tests.support.ledger import card_states

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000
T0_MS = NOW_MS - DAY_MS  # default bus taps ride from here, PASSBACK_GAP_MS apart per seq
PASSBACK_GAP_MS = 31_000  # more than the shipped table's 30 s anti-passback window
TABLES = shipped_tables()  # version 1 in force since 2009: route 12 has the default 200 fen base
BUS_FARE_FEN = 182  # 200 fen base x 91 %
BIKE_DEPOSIT_FEN = 20_000  # the shipped table's bike deposit, held unless in good credit

ALICE = make_card_no(1001)  # active adult, 1000 fen
BOB = make_card_no(1002)  # active adult, 181 fen: one fen short of a bus ride
CAROL = make_card_no(1003)  # blocked
DAVE = make_card_no(1004)  # cancelled
ERIN = make_card_no(1005)  # active adult, 30000 fen, not in good credit: bike deposits are held
FRANK = make_card_no(1006)  # active elderly, 500 fen: urban buses free, four rides a day
NOBODY = make_card_no(9999)  # not in the shard


def _cards() -> list[CardState]:
    return [
        CardState(ALICE, CardStatus.ACTIVE, Category.ADULT, 1000),
        CardState(BOB, CardStatus.ACTIVE, Category.ADULT, 181),
        CardState(CAROL, CardStatus.BLOCKED, Category.ADULT, 500),
        CardState(DAVE, CardStatus.CANCELLED, Category.ELDERLY, 500),
        CardState(ERIN, CardStatus.ACTIVE, Category.ADULT, 30_000, credit_good=False),
        CardState(FRANK, CardStatus.ACTIVE, Category.ELDERLY, 500),
    ]


def _ledger(dedupe_limit: int = 1_000_000) -> Ledger:
    ledger = Ledger(shard_id=0, tables=TABLES, dedupe_limit=dedupe_limit)
    for card in _cards():
        ledger.add_card(card)
    return ledger


def _bus(terminal_id: int, seq: int, card_no: int, time_ms: int | None = None) -> Tap:
    """A bus tap on route 12. By default its time follows from the seq, 31 s per seq, so a
    card's rides on one terminal are never in the anti-passback window (and a retry is the
    same tap)."""
    if time_ms is None:
        time_ms = T0_MS + seq * PASSBACK_GAP_MS
    return Tap(terminal_id, seq, card_no, time_ms, TapKind.BUS, route=12)


def _debit(terminal_id: int, seq: int, card_no: int, amount_fen: int) -> Tap:
    return Tap(terminal_id, seq, card_no, NOW_MS - 5, TapKind.MERCHANT, amount_fen=amount_fen)


def _ok(fare_fen: int, balance_fen: int, replay: bool = False) -> Outcome:
    return Outcome(Result.OK, fare_fen, balance_fen, replay)


# -- construction ------------------------------------------------------------------------
def test_dedupe_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Ledger(shard_id=0, tables=TABLES, dedupe_limit=0)


def test_empty_batch() -> None:
    ledger = _ledger()
    assert ledger.apply([], NOW_MS) == ([], [])
    assert ledger.lsn == 0


# -- first decisions ---------------------------------------------------------------------
def test_ok_debit_charges_the_fare_and_journals_it() -> None:
    ledger = _ledger()
    outcomes, rows = ledger.apply([_bus(7, 1, ALICE, time_ms=NOW_MS - 40)], NOW_MS)
    assert outcomes == [_ok(BUS_FARE_FEN, 1000 - BUS_FARE_FEN)]
    assert rows == [
        JournalRow(
            lsn=1,
            terminal_id=7,
            seq=1,
            card_no=ALICE,
            kind=TapKind.BUS,
            route=12,
            tap_time_ms=NOW_MS - 40,
            applied_ms=NOW_MS,
            result=Result.OK,
            amount_fen=BUS_FARE_FEN,
            balance_after_fen=1000 - BUS_FARE_FEN,
            fare_version=1,
            d_epurse=-BUS_FARE_FEN,
        )
    ]
    assert ledger.balances()[ALICE] == 1000 - BUS_FARE_FEN
    assert ledger.lsn == 1


def test_balance_exactly_equal_to_the_fare_is_enough() -> None:
    ledger = _ledger()
    outcomes, _ = ledger.apply([_debit(7, 1, BOB, 181)], NOW_MS)
    assert outcomes == [_ok(181, 0)]
    assert ledger.balances()[BOB] == 0


def test_insufficient_funds_charges_nothing() -> None:
    ledger = _ledger()
    outcomes, rows = ledger.apply([_bus(7, 1, BOB)], NOW_MS)
    assert outcomes == [Outcome(Result.INSUFFICIENT_FUNDS, 0, 181, False)]
    assert ledger.balances()[BOB] == 181
    # a decision all the same: journaled, with nothing debited
    assert [(r.result, r.amount_fen, r.balance_after_fen) for r in rows] == [
        (Result.INSUFFICIENT_FUNDS, 0, 181)
    ]


def test_unknown_card() -> None:
    ledger = _ledger()
    outcomes, rows = ledger.apply([_bus(7, 1, NOBODY)], NOW_MS)
    assert outcomes == [Outcome(Result.CARD_UNKNOWN, 0, -1, False)]
    assert [(r.result, r.amount_fen, r.balance_after_fen) for r in rows] == [
        (Result.CARD_UNKNOWN, 0, -1)
    ]
    assert NOBODY not in ledger.balances()


@pytest.mark.parametrize(
    ("card_no", "result"), [(CAROL, Result.CARD_BLOCKED), (DAVE, Result.CARD_CANCELLED)]
)
def test_blocked_and_cancelled_cards_are_refused(card_no: int, result: Result) -> None:
    ledger = _ledger()
    before = ledger.balances()
    outcomes, rows = ledger.apply([_bus(7, 1, card_no), _debit(7, 2, card_no, 1)], NOW_MS)
    assert outcomes == [Outcome(result, 0, 500, False)] * 2
    assert [(r.result, r.amount_fen) for r in rows] == [(result, 0), (result, 0)]
    assert ledger.balances() == before


def test_status_is_checked_before_the_fare() -> None:
    ledger = _ledger()
    outcomes, _ = ledger.apply([Tap(7, 1, CAROL, NOW_MS, TapKind.BUS, route=0)], NOW_MS)
    assert outcomes[0].result == Result.CARD_BLOCKED


BEFORE_ANY_TABLE_MS = 1_000_000_000_000  # 2001: before the shipped table's first version


@pytest.mark.parametrize(
    ("tap", "result"),
    [
        (Tap(7, 1, ALICE, NOW_MS, TapKind.BUS, route=0), Result.BAD_TAP),
        (Tap(7, 1, ALICE, NOW_MS, TapKind.TAXI, amount_fen=0), Result.BAD_TAP),
        (Tap(7, 1, ALICE, NOW_MS, TapKind.TAXI, amount_fen=1_000_001), Result.BAD_TAP),
        (Tap(7, 1, ALICE, NOW_MS, 99), Result.BAD_TAP),
        (Tap(7, 1, ALICE, NOW_MS, TapKind.PARK_ENTRY, route=99), Result.BAD_TAP),
        (Tap(7, 1, ALICE, NOW_MS, TapKind.LIBRARY, route=1), Result.APP_NOT_ENABLED),
        (Tap(7, 1, ALICE, NOW_MS, TapKind.MEDICAL, amount_fen=100, bill_class=1),
         Result.APP_NOT_ENABLED),
        (Tap(7, 1, ALICE, NOW_MS, TapKind.PARK_ENTRY, route=3), Result.PASS_REQUIRED),
        (Tap(7, 1, ALICE, NOW_MS, TapKind.BIKE_RETURN, route=1), Result.NO_OPEN_RENTAL),
        (Tap(7, 1, ALICE, NOW_MS, TapKind.PARKING_EXIT, route=1), Result.NO_PARKING_SESSION),
        (Tap(7, 1, ALICE, BEFORE_ANY_TABLE_MS, TapKind.BUS, route=1), Result.NO_FARE_TABLE),
    ],
)
def test_fare_refusals_are_journaled_decisions_without_charge(tap: Tap, result: Result) -> None:
    ledger = _ledger()
    before = card_states(ledger)
    outcomes, rows = ledger.apply([tap], NOW_MS)
    assert outcomes == [Outcome(result, 0, 1000, False)]
    assert [(r.result, r.amount_fen, r.balance_after_fen) for r in rows] == [(result, 0, 1000)]
    version = 0 if result == Result.NO_FARE_TABLE else 1
    assert [(r.fare_version, r.fund_fen, r.concession) for r in rows] == [(version, 0, -1)]
    assert msgspec.structs.astuple(rows[0])[16:22] == (0,) * 6  # no purse moved
    assert ledger.balances()[ALICE] == 1000
    assert card_states(ledger) == before


def test_other_issuers_card_not_in_the_table_is_refused() -> None:
    stranger = make_card_no(1, issuer=440300)  # Shenzhen: not listed, unlisted not accepted
    ledger = _ledger()
    ledger.add_card(CardState(stranger, CardStatus.ACTIVE, Category.ADULT, 1000))
    outcomes, rows = ledger.apply([_bus(7, 1, stranger)], NOW_MS)
    assert outcomes == [Outcome(Result.ISSUER_NOT_ACCEPTED, 0, 1000, False)]
    assert [(r.result, r.amount_fen) for r in rows] == [(Result.ISSUER_NOT_ACCEPTED, 0)]
    assert ledger.balances()[stranger] == 1000


def test_passback_refuses_a_second_ride_on_the_same_terminal_without_charge() -> None:
    ledger = _ledger()
    first, second, later = (
        _bus(7, s, ALICE, time_ms=T0_MS + dt) for s, dt in ((1, 0), (2, 29_999), (3, 30_000))
    )
    outcomes, rows = ledger.apply([first, second, later], NOW_MS)
    assert outcomes == [
        _ok(BUS_FARE_FEN, 818),
        Outcome(Result.PASSBACK, 0, 818, False),
        _ok(BUS_FARE_FEN, 636),
    ]
    assert [(r.result, r.amount_fen) for r in rows] == [
        (Result.OK, BUS_FARE_FEN), (Result.PASSBACK, 0), (Result.OK, BUS_FARE_FEN)]
    assert ledger.balances()[ALICE] == 636


def test_balances_are_totals_over_all_purses_deposits_included() -> None:
    ledger = _ledger()
    outcomes, rows = ledger.apply([Tap(10, 1, ERIN, NOW_MS, TapKind.BIKE_RENT, route=3)], NOW_MS)
    assert outcomes == [_ok(0, 30_000 - BIKE_DEPOSIT_FEN)]  # a deposit is held, not charged
    assert (rows[0].amount_fen, rows[0].d_epurse, rows[0].d_deposit) == (
        0, -BIKE_DEPOSIT_FEN, BIKE_DEPOSIT_FEN)
    card = ledger.cards[ERIN]
    assert card.purses == [30_000 - BIKE_DEPOSIT_FEN, 0, 0, 0, 0, BIKE_DEPOSIT_FEN]
    assert card.rental == (3, NOW_MS, BIKE_DEPOSIT_FEN)
    assert ledger.balances()[ERIN] == 30_000  # still the holder's money
    assert ledger.total_balance_fen() == sum(ledger.balances().values())


@pytest.mark.parametrize(
    "tap",
    [
        Tap(0, 1, ALICE, NOW_MS, TapKind.BUS, route=1),  # terminal id 0
        Tap(-7, 1, ALICE, NOW_MS, TapKind.BUS, route=1),
        Tap(2**31, 1, ALICE, NOW_MS, TapKind.BUS, route=1),  # above MAX_TERMINAL_ID
        Tap(7, 0, ALICE, NOW_MS, TapKind.BUS, route=1),  # seq 0
        Tap(7, -1, ALICE, NOW_MS, TapKind.BUS, route=1),
        Tap(7, MAX_SEQ + 1, ALICE, NOW_MS, TapKind.BUS, route=1),
        Tap(7, 1, 0, NOW_MS, TapKind.BUS, route=1),  # card 0
        Tap(7, 1, 10**18, NOW_MS, TapKind.BUS, route=1),  # above MAX_CARD_NO
        Tap(7, 1, ALICE, -1, TapKind.BUS, route=1),  # negative tap time
    ],
)
def test_ids_out_of_range_are_bad_taps_with_no_row_and_no_memory(tap: Tap) -> None:
    ledger = _ledger()
    outcomes, rows = ledger.apply([tap, tap], NOW_MS)
    assert outcomes == [Outcome(Result.BAD_TAP, 0, -1, False)] * 2
    assert rows == []
    assert ledger.lsn == 0
    assert ledger.dedupe_size() == 0
    assert ledger.balances()[ALICE] == 1000


def test_out_of_range_seq_does_not_alias_another_terminals_dedupe_key() -> None:
    """A tap whose seq is above MAX_SEQ is BAD_TAP, whatever was decided before.

    dedupe_key(7, 2**32 + 1) == dedupe_key(7, 1), and the ledger looks the key up before it
    validates the ids, so this tap is answered as a paid replay of (7, 1).
    """
    ledger = _ledger()
    ledger.apply([_bus(7, 1, ALICE)], NOW_MS)
    outcomes, rows = ledger.apply([_bus(7, MAX_SEQ + 2, ALICE)], NOW_MS)
    assert outcomes == [Outcome(Result.BAD_TAP, 0, -1, False)]
    assert rows == []


def test_out_of_range_ids_do_not_alias_another_terminals_dedupe_key() -> None:
    """Terminal 0 (invalid) with seq (9 << 32) | 1 has the dedupe key of (9, 1)."""
    ledger = _ledger()
    ledger.apply([_bus(9, 1, ALICE)], NOW_MS)
    outcomes, rows = ledger.apply([_bus(0, (9 << 32) | 1, BOB)], NOW_MS)
    assert outcomes == [Outcome(Result.BAD_TAP, 0, -1, False)]
    assert rows == []


def test_a_batch_is_applied_in_order() -> None:
    ledger = _ledger()
    taps = [_debit(7, 1, ALICE, 600), _debit(7, 2, ALICE, 600), _debit(7, 3, ALICE, 400)]
    outcomes, rows = ledger.apply(taps, NOW_MS)
    assert [o.result for o in outcomes] == [Result.OK, Result.INSUFFICIENT_FUNDS, Result.OK]
    assert [o.balance_fen for o in outcomes] == [400, 400, 0]
    assert [r.seq for r in rows] == [1, 2, 3]


def test_fare_table_in_force_prices_the_tap() -> None:
    tables = parse_tables({
        "city": "Test", "home_issuer": 330100,
        "versions": [
            {"version": 1, "effective_from": "2009-01-01T00:00:00+08:00",
             "bus": {"route_base_fen": {"12": 150}}},
            {"version": 2, "effective_from": "2023-11-15T00:00:00+08:00",  # NOW_MS - 14 h
             "bus": {"card_percent": 90}},
        ],
    })
    ledger = Ledger(shard_id=3, tables=tables)
    ledger.add_card(CardState(ALICE, CardStatus.ACTIVE, Category.ADULT, 1000))
    # priced by the version in force at the tap's own time, not at the time it is applied
    taps = [_bus(7, 1, ALICE, time_ms=T0_MS), _bus(7, 2, ALICE, time_ms=NOW_MS - 5)]
    outcomes, rows = ledger.apply(taps, NOW_MS)
    assert outcomes == [_ok(137, 863), _ok(135, 728)]  # 150 x 91 % = 136.5 -> 137; 150 x 90 %
    assert [r.fare_version for r in rows] == [1, 2]


# -- idempotent retries ------------------------------------------------------------------
def test_retry_in_the_same_batch_answers_the_first_outcome() -> None:
    ledger = _ledger()
    outcomes, rows = ledger.apply([_bus(7, 1, ALICE), _bus(7, 1, ALICE)], NOW_MS)
    assert outcomes == [_ok(BUS_FARE_FEN, 818), _ok(BUS_FARE_FEN, 818, replay=True)]
    assert len(rows) == 1
    assert ledger.balances()[ALICE] == 818


def test_retry_in_a_later_batch_answers_the_first_outcome() -> None:
    ledger = _ledger()
    first, _ = ledger.apply([_bus(7, 1, ALICE)], NOW_MS)
    ledger.apply([_bus(7, 2, ALICE)], NOW_MS + 1)  # balance moves on: 636
    again, rows = ledger.apply([_bus(7, 1, ALICE)], NOW_MS + 2)
    assert again == [msgspec.structs.replace(first[0], replay=True)]
    assert again == [_ok(BUS_FARE_FEN, 818, replay=True)]  # the balance after the first tap
    assert rows == []
    assert ledger.balances()[ALICE] == 1000 - 2 * BUS_FARE_FEN
    assert ledger.lsn == 2


def test_retry_answers_a_refusal_the_same_way_even_after_a_top_up() -> None:
    ledger = _ledger()
    ledger.apply([_bus(7, 1, BOB)], NOW_MS)
    ledger.cards[BOB].balance_fen = 5_000  # topped up meanwhile
    again, rows = ledger.apply([_bus(7, 1, BOB)], NOW_MS + 1)
    assert again == [Outcome(Result.INSUFFICIENT_FUNDS, 0, 181, True)]
    assert rows == []
    assert ledger.balances()[BOB] == 5_000


def test_retry_of_a_retry_is_still_the_first_outcome() -> None:
    ledger = _ledger()
    ledger.apply([_debit(7, 1, ALICE, 100)], NOW_MS)
    for i in range(5):
        again, rows = ledger.apply([_debit(7, 1, ALICE, 100)], NOW_MS + i)
        assert again == [_ok(100, 900, replay=True)]
        assert rows == []
    assert ledger.balances()[ALICE] == 900


def test_same_seq_on_another_terminal_is_a_new_tap() -> None:
    ledger = _ledger()
    outcomes, rows = ledger.apply([_bus(7, 1, ALICE), _bus(8, 1, ALICE)], NOW_MS)
    assert outcomes == [_ok(BUS_FARE_FEN, 818), _ok(BUS_FARE_FEN, 636)]
    assert len(rows) == 2


def test_reused_seq_with_another_card_is_duplicate_seq_and_charges_nothing() -> None:
    ledger = _ledger()
    ledger.apply([_debit(7, 1, BOB, 100)], NOW_MS)
    outcomes, rows = ledger.apply([_bus(7, 1, ALICE)], NOW_MS + 1)
    assert outcomes == [Outcome(Result.DUPLICATE_SEQ, 0, -1, False)]
    assert rows == []
    assert ledger.balances()[ALICE] == 1000
    assert ledger.balances()[BOB] == 81
    # the first tap's outcome is still what a real retry gets
    again, _ = ledger.apply([_debit(7, 1, BOB, 100)], NOW_MS + 2)
    assert again == [_ok(100, 81, replay=True)]


def test_reused_seq_with_another_card_in_the_same_batch() -> None:
    ledger = _ledger()
    outcomes, rows = ledger.apply([_bus(7, 1, ALICE), _bus(7, 1, NOBODY)], NOW_MS)
    assert outcomes == [_ok(BUS_FARE_FEN, 818), Outcome(Result.DUPLICATE_SEQ, 0, -1, False)]
    assert len(rows) == 1


# -- the journal -------------------------------------------------------------------------
def test_journal_rows_have_strictly_increasing_lsn_across_batches() -> None:
    ledger = _ledger()
    lsns: list[int] = []
    for batch_no in range(4):
        taps = [_bus(7, batch_no * 10 + i, ALICE) for i in range(1, 4)]
        _, rows = ledger.apply(taps, NOW_MS + batch_no)
        lsns += [r.lsn for r in rows]
    assert lsns == list(range(1, 13))
    assert ledger.lsn == 12


def test_journal_rows_only_for_first_decisions() -> None:
    ledger = _ledger(dedupe_limit=2)
    taps = [
        _bus(7, 1, ALICE),  # decided: row
        _bus(7, 1, ALICE),  # retry: no row
        _bus(7, 1, BOB),  # duplicate seq: no row
        _bus(7, 0, ALICE),  # bad ids: no row
        _bus(7, 2, NOBODY),  # unknown card, decided: row
        _bus(7, 3, CAROL),  # blocked, decided: row
        _bus(7, 1, ALICE),  # retry: eviction happens at the end of a batch, so still a replay
    ]
    outcomes, rows = ledger.apply(taps, NOW_MS)
    assert [o.result for o in outcomes] == [
        Result.OK,
        Result.OK,
        Result.DUPLICATE_SEQ,
        Result.BAD_TAP,
        Result.CARD_UNKNOWN,
        Result.CARD_BLOCKED,
        Result.OK,
    ]
    assert [o.replay for o in outcomes] == [False, True, False, False, False, False, True]
    # ... and after the batch, seq 1 is evicted: too old, no row.
    late, late_rows = ledger.apply([_bus(7, 1, ALICE)], NOW_MS)
    assert [o.result for o in late] == [Result.SEQ_TOO_OLD] and late_rows == []
    assert [(r.lsn, r.seq, r.result) for r in rows] == [
        (1, 1, Result.OK),
        (2, 2, Result.CARD_UNKNOWN),
        (3, 3, Result.CARD_BLOCKED),
    ]
    assert all(r.result in DECIDED for r in rows)


# -- bounded dedupe memory ---------------------------------------------------------------
def test_retry_of_an_evicted_seq_is_seq_too_old_and_charges_nothing() -> None:
    ledger = _ledger(dedupe_limit=3)
    for seq in range(1, 5):  # seq 4 evicts seq 1
        ledger.apply([_debit(7, seq, ALICE, 10)], NOW_MS + seq)
    assert ledger.dedupe_size() == 3
    assert ledger.balances()[ALICE] == 960
    outcomes, rows = ledger.apply([_debit(7, 1, ALICE, 10)], NOW_MS + 10)
    assert outcomes == [Outcome(Result.SEQ_TOO_OLD, 0, -1, False)]
    assert rows == []
    assert ledger.balances()[ALICE] == 960
    assert ledger.lsn == 4
    # seqs still remembered answer their first outcome
    again, _ = ledger.apply([_debit(7, 2, ALICE, 10)], NOW_MS + 11)
    assert again == [_ok(10, 980, replay=True)]


def test_dedupe_memory_stays_bounded() -> None:
    ledger = _ledger(dedupe_limit=3)
    for seq in range(1, 50):
        ledger.apply([_bus(7, seq, NOBODY)], NOW_MS)
        assert ledger.dedupe_size() <= 3


def test_eviction_watermark_is_per_terminal() -> None:
    ledger = _ledger(dedupe_limit=1)
    ledger.apply([_debit(7, 5, ALICE, 10), _debit(8, 1, ALICE, 10)], NOW_MS)  # evicts (7, 5)
    # a never-seen lower seq of terminal 7 is below its watermark
    outcomes, _ = ledger.apply([_debit(7, 3, ALICE, 10)], NOW_MS)
    assert outcomes == [Outcome(Result.SEQ_TOO_OLD, 0, -1, False)]
    # terminal 9 has no watermark: its seq 1 is new
    outcomes, _ = ledger.apply([_debit(9, 1, ALICE, 10)], NOW_MS)
    assert outcomes == [_ok(10, 970)]
    # a higher seq of terminal 7 is new
    outcomes, _ = ledger.apply([_debit(7, 6, ALICE, 10)], NOW_MS)
    assert outcomes == [_ok(10, 960)]


def test_retry_within_the_same_batch_is_a_replay_even_past_the_limit() -> None:
    ledger = _ledger(dedupe_limit=1)
    outcomes, rows = ledger.apply(
        [_debit(7, 1, ALICE, 10), _debit(7, 2, ALICE, 10), _debit(7, 1, ALICE, 10)], NOW_MS
    )
    assert [(o.result, o.replay) for o in outcomes] == [
        (Result.OK, False), (Result.OK, False), (Result.OK, True)]
    assert len(rows) == 2
    assert ledger.balances()[ALICE] == 980
    assert ledger.dedupe_size() == 1  # evicted down to the limit at the end of the batch
    late, late_rows = ledger.apply([_debit(7, 1, ALICE, 10)], NOW_MS)
    assert [o.result for o in late] == [Result.SEQ_TOO_OLD] and late_rows == []


# -- recovery ----------------------------------------------------------------------------
def _history(ledger: Ledger) -> tuple[list[Tap], list[JournalRow], list[Outcome]]:
    """Apply a few batches with every kind of outcome, and taps that leave state on cards
    (a held deposit, an open rental and parking session, a ride counter, passback memory);
    return taps, rows and outcomes."""
    batches = [
        [_bus(7, 1, ALICE), _bus(7, 2, BOB), _bus(8, 1, CAROL), _bus(8, 2, NOBODY)],
        [_debit(7, 3, BOB, 181), _bus(7, 1, ALICE), _debit(9, 1, ALICE, 300)],
        [_bus(9, 2, DAVE), Tap(9, 3, ALICE, NOW_MS, TapKind.LIBRARY, route=1), _bus(7, 4, ALICE)],
        [Tap(10, 1, ERIN, NOW_MS - 7_200_000, TapKind.BIKE_RENT, route=3), _bus(7, 5, FRANK),
         Tap(11, 1, ALICE, NOW_MS - 600_000, TapKind.PARKING_ENTRY, route=7),
         Tap(12, 1, ALICE, NOW_MS - 60_000, TapKind.BIKE_RENT, route=4), _bus(7, 6, FRANK)],
        [Tap(10, 2, ERIN, NOW_MS - 1_800_000, TapKind.BIKE_RETURN, route=5),  # 90 min: 1 h charged
         _bus(7, 7, FRANK, time_ms=T0_MS + 6 * PASSBACK_GAP_MS + 1_000)],  # passback: refused
    ]
    taps: list[Tap] = []
    rows: list[JournalRow] = []
    outcomes: list[Outcome] = []
    for i, batch in enumerate(batches):
        got, new_rows = ledger.apply(batch, NOW_MS + i)
        taps += batch
        rows += new_rows
        outcomes += got
    return taps, rows, outcomes


def test_history_covers_the_state_taps_leave() -> None:
    original = _ledger()
    _, rows, outcomes = _history(original)
    assert {o.result for o in outcomes} >= {
        Result.OK, Result.INSUFFICIENT_FUNDS, Result.CARD_BLOCKED, Result.CARD_UNKNOWN,
        Result.CARD_CANCELLED, Result.APP_NOT_ENABLED, Result.PASSBACK}
    erin, alice, frank = (original.cards[c] for c in (ERIN, ALICE, FRANK))
    # ERIN: deposit held, then returned less the 1 h over the free hour
    assert erin.purses == [30_000 - 100, 0, 0, 0, 0, 0] and erin.rental is None
    assert alice.rental == (4, NOW_MS - 60_000, 0) and alice.parking == (7, NOW_MS - 600_000)
    assert frank.purses[Purse.EPURSE] == 500 and frank.rides and sum(frank.rides.values()) == 2
    assert alice.recent and frank.recent
    opening_fen = sum(c.total_fen() for c in _cards())
    assert opening_fen == original.total_balance_fen() + sum(r.amount_fen for r in rows)


def test_replay_with_effect_rebuilds_balances_lsn_and_dedupe() -> None:
    original = _ledger()
    taps, rows, _ = _history(original)
    recovered = _ledger()
    for row in rows:
        recovered.replay(row, apply_effect=True)
    assert card_states(recovered) == card_states(original)
    assert recovered.balances() == original.balances()
    assert recovered.lsn == original.lsn == len(rows)
    assert recovered.dedupe_size() == original.dedupe_size()
    # retries after the restart get the same first outcomes as on the original, no charge
    expected, _ = original.apply(taps, NOW_MS + 100)
    got, new_rows = recovered.apply(taps, NOW_MS + 100)
    assert got == expected
    assert all(o.replay for o in got)
    assert new_rows == []
    assert recovered.balances() == original.balances()
    assert card_states(recovered) == card_states(original)


def test_replay_then_new_taps_continue_the_lsn() -> None:
    original = _ledger()
    _, rows, _ = _history(original)
    recovered = _ledger()
    for row in rows:
        recovered.replay(row, apply_effect=True)
    # new taps that depend on the rebuilt state: a debit, a passback, a return, a parking exit
    taps = [
        _debit(7, 100, ALICE, 1),
        _bus(7, 101, FRANK, time_ms=T0_MS + 6 * PASSBACK_GAP_MS + 2_000),
        Tap(12, 2, ALICE, NOW_MS, TapKind.BIKE_RETURN, route=4),
        Tap(11, 2, ALICE, NOW_MS, TapKind.PARKING_EXIT, route=7),
        Tap(10, 3, ERIN, NOW_MS, TapKind.BIKE_RETURN, route=5),
    ]
    expected = original.apply(taps, NOW_MS + 5)
    assert [o.result for o in expected[0]] == [
        Result.OK, Result.PASSBACK, Result.OK, Result.OK, Result.NO_OPEN_RENTAL]
    assert recovered.apply(taps, NOW_MS + 5) == expected
    assert card_states(recovered) == card_states(original)


def _copy_of(card: CardState) -> CardState:
    """The card as a recovery rebuilds it from a snapshot: its record plus the encoded state."""
    copy = CardState(card.card_no, card.status, card.category, 0, credit_good=card.credit_good)
    restore_card(copy, encode_card(card))
    return copy


def test_replay_without_effect_only_refills_dedupe() -> None:
    original = _ledger()
    taps, rows, _ = _history(original)
    # a snapshot taken after the rows: the card states already include them
    snapshot = Ledger(shard_id=0, tables=TABLES)
    for card in original.cards.values():
        snapshot.add_card(_copy_of(card))
    for row in rows:
        snapshot.replay(row, apply_effect=False)
    assert card_states(snapshot) == card_states(original)
    assert snapshot.balances() == original.balances()
    assert snapshot.lsn == original.lsn
    assert snapshot.dedupe_size() == original.dedupe_size()
    expected, _ = original.apply(taps, NOW_MS + 100)
    got, new_rows = snapshot.apply(taps, NOW_MS + 100)
    assert got == expected
    assert new_rows == []
    assert snapshot.balances() == original.balances()
    assert card_states(snapshot) == card_states(original)


def test_rebuild_takes_each_cards_newest_logged_state() -> None:
    """The card-state log holds several states of a card until compaction: read in lsn order,
    the newest wins, rows are replayed past it alone, and a log out of order is refused."""
    original = _ledger()
    _, rows, _ = _history(original)
    cut = len(rows) // 2
    mid = _ledger()
    for row in rows[:cut]:
        mid.replay(row, apply_effect=True)
    # Every card twice: as opened (lsn 0), then as of the cut, the state the replay must start from;
    # and the cards a later row changes once more, as of that row: a snapshot past the mark that
    # stopped before its own mark. Their rows up to it must not be replayed on them again.
    log = [(c.card_no, 0, encode_card(c)) for c in _ledger().cards.values()]
    log += [(c.card_no, cut, encode_card(c)) for c in mid.cards.values()]
    late = cut + (len(rows) - cut) // 2
    for row in rows[cut:late]:
        mid.replay(row, apply_effect=True)
    ahead = {row.card_no for row in rows[cut:late]}
    assert ahead
    log += [(c.card_no, late, encode_card(c)) for c in mid.cards.values() if c.card_no in ahead]
    recovered = Ledger(shard_id=0, tables=TABLES)
    rebuild = Rebuild(recovered, cut, len(rows))
    rebuild.add_cards(_cards())
    rebuild.restore_snapshot(log)
    for row in rows[rebuild.start:]:
        rebuild.row(row)
    report = rebuild.report()
    assert report.states == len(log) and report.mismatches == 0
    assert card_states(recovered) == card_states(original)
    with pytest.raises(ValueError, match="lsn order"):
        Rebuild(_ledger(), cut, len(rows)).restore_snapshot(list(reversed(log)))


def test_replay_split_at_a_snapshot() -> None:
    original = _ledger()
    _, rows, _ = _history(original)
    for cut in range(len(rows) + 1):  # a snapshot after any row
        # the snapshot includes rows[:cut]; rows[cut:] come after it
        mid = _ledger()
        for row in rows[:cut]:
            mid.replay(row, apply_effect=True)
        snapshot = {c.card_no: encode_card(c) for c in mid.cards.values()}
        recovered = _ledger()
        for card_no, state in snapshot.items():
            restore_card(recovered.cards[card_no], state)
        for row in rows[:cut]:
            recovered.replay(row, apply_effect=False)
        for row in rows[cut:]:
            recovered.replay(row, apply_effect=True)
        assert card_states(recovered) == card_states(original), cut
        assert recovered.balances() == original.balances()
        assert recovered.lsn == original.lsn


def test_replay_keeps_the_eviction_watermark() -> None:
    original = _ledger(dedupe_limit=2)
    _, rows, _ = _history(original)
    recovered = _ledger(dedupe_limit=2)
    for row in rows:
        recovered.replay(row, apply_effect=True)
    old = _bus(7, 1, ALICE)  # evicted long ago
    assert recovered.apply([old], NOW_MS) == original.apply([old], NOW_MS)
    assert recovered.apply([old], NOW_MS)[0] == [Outcome(Result.SEQ_TOO_OLD, 0, -1, False)]


def test_inline_bus_rides_keep_the_anti_passback_memory_as_the_rules_do() -> None:
    """The ledger decides the common bus ride inline; passback, eviction of the memory and late
    taps must come out exactly as through rules.decide + apply_effects."""
    t = T0_MS
    taps = [
        _bus(1, 1, ERIN, t),
        _bus(1, 2, ERIN, t + 10_000),  # same terminal within 30 s: PASSBACK
        _bus(1, 3, ERIN, t - 5_000),  # a late tap timed just before the charged one: PASSBACK
        _bus(1, 4, ERIN, t + 40_000),  # out of the window: charged
        *[_bus(10 + i, 1, ERIN, t + 50_000 + i) for i in range(5)],  # memory holds 4 terminals
        _bus(1, 5, ERIN, t + 60_000),  # terminal 1 was forgotten first: charged again
        _bus(20, 1, ERIN, t + 200_000),
        _bus(20, 2, ERIN, t + 100_000),  # late but out of the window: charged, memory stays
        _bus(20, 3, ERIN, t + 220_000),  # 20 s after the newest ride there: PASSBACK
        _bus(2, 1, BOB, t),  # one fen short
    ]
    runs = []
    for inline in (True, False):
        ledger = Ledger(shard_id=0, tables=TABLES, inline=inline)
        for card in _cards():
            ledger.add_card(card)
        outcomes, rows = ledger.apply(taps, NOW_MS)
        runs.append((outcomes, rows, card_states(ledger)))
    assert runs[0] == runs[1]
    results = [o.result for o in runs[0][0]]
    assert results == [Result.OK, Result.PASSBACK, Result.PASSBACK, Result.OK] + [Result.OK] * 5 + [
        Result.OK, Result.OK, Result.OK, Result.PASSBACK, Result.INSUFFICIENT_FUNDS]


# -- snapshots -----------------------------------------------------------------------------
def _states(rows: list[tuple[int, int, bytes]]) -> dict[int, list[int]]:
    out = {}
    for card_no, money, state in rows:
        card = CardState(card_no, CardStatus.ACTIVE, Category.ADULT, 0)
        restore_card(card, state)
        assert money == sum(card.purses)
        out[card_no] = card.purses
    return out


def test_a_snapshot_holds_only_the_cards_changed_since_the_last_one() -> None:
    ledger = _ledger()
    ledger.apply([_bus(7, 1, ALICE), _bus(7, 2, NOBODY)], NOW_MS)
    rows, changed = ledger.snapshots.take()
    assert _states(rows) == {ALICE: [1000 - BUS_FARE_FEN, 0, 0, 0, 0, 0]}
    assert changed == {ALICE, NOBODY}  # an unknown card is named but has no state to write
    assert ledger.snapshots.take() == ([], set())  # nothing changed since
    ledger.apply([_bus(7, 3, BOB)], NOW_MS)  # refused: one fen short, no change, still written
    ledger.snapshots.restore(changed)  # that snapshot was not stored: its cards go again
    rows, _ = ledger.snapshots.take()
    assert set(_states(rows)) == {ALICE, BOB}


def test_a_snapshot_in_slices_is_as_of_its_start_though_taps_and_ops_go_on() -> None:
    """Copy on write: a card a tap or an op is about to change is encoded first."""
    ledger = _ledger()
    ledger.apply([_bus(7, 1, ALICE), _bus(7, 2, ERIN), _bus(7, 3, FRANK)], NOW_MS)
    as_of = {c: list(ledger.cards[c].purses) for c in (ALICE, ERIN, FRANK)}
    assert ledger.snapshots.begin() == 3
    with pytest.raises(RuntimeError):
        ledger.snapshots.begin()
    assert not ledger.snapshots.step(1)  # one encoded, two to go
    ledger.apply([_bus(7, 4, ALICE), _bus(7, 5, ERIN), _bus(7, 6, BOB)], NOW_MS)
    ledger.apply_ops([TopUp("top-1", FRANK, int(Purse.EPURSE), 300)], NOW_MS)
    assert ledger.snapshots.step(10)
    rows, changed = ledger.snapshots.finish()
    assert changed == {ALICE, ERIN, FRANK}
    assert _states(rows) == as_of  # not the taps and the top-up made after it began
    assert ledger.cards[FRANK].purses[0] == as_of[FRANK][0] + 300
    rows, _ = ledger.snapshots.take()  # they are in the next one
    assert set(_states(rows)) == {ALICE, ERIN, BOB, FRANK}


def test_an_abandoned_snapshot_hands_its_cards_to_the_next() -> None:
    ledger = _ledger()
    ledger.apply([_bus(7, 1, ALICE), _bus(7, 2, ERIN)], NOW_MS)
    ledger.snapshots.begin()
    ledger.snapshots.step(1)
    ledger.snapshots.abandon()
    rows, _ = ledger.snapshots.take()
    assert set(_states(rows)) == {ALICE, ERIN}
