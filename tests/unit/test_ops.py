"""Card-service ops in the pure ledger: each applied once per key, journaled, replayable."""

import msgspec
import pytest

from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import (
    App,
    CardState,
    CardStatus,
    Category,
    encode_card,
    make_card_no,
    restore_card,
)
from citycard.domain.ledger import Ledger
from citycard.domain.ops import (
    Cancel,
    Credit,
    OpKind,
    Refund,
    SetApps,
    SetProduct,
    SetProfile,
    SetStatus,
    TopUp,
    TransferIn,
    TransferOut,
    decode_op,
    encode_op,
)
from citycard.domain.purses import Purse
from citycard.domain.results import Result
from citycard.domain.taps import Tap, TapKind

NOW_MS = 1_700_000_000_000
TABLES = shipped_tables()
A, B, C = make_card_no(11), make_card_no(12), make_card_no(13)


def _ledger() -> Ledger:
    ledger = Ledger(0, TABLES)
    ledger.add_card(CardState(A, CardStatus.ACTIVE, Category.ADULT, 1000))
    ledger.add_card(CardState(B, CardStatus.ACTIVE, Category.ADULT, 0))
    ledger.add_card(CardState(C, CardStatus.CANCELLED, Category.ADULT, 0))
    return ledger


def _card(ledger: Ledger, card_no: int) -> CardState:
    return ledger.cards[card_no]


def test_top_up_once_per_key_and_a_reused_key_is_refused() -> None:
    ledger = _ledger()
    first, rows = ledger.apply_ops([TopUp("k1", A, Purse.EPURSE, 500)], NOW_MS)
    again, rows2 = ledger.apply_ops([TopUp("k1", A, Purse.EPURSE, 500)], NOW_MS)
    other, rows3 = ledger.apply_ops([TopUp("k1", A, Purse.EPURSE, 700)], NOW_MS)
    assert first[0].result == Result.OK and first[0].deltas[Purse.EPURSE] == 500 and not first[0].replay
    assert again[0] == msgspec.structs.replace(first[0], replay=True) and rows2 == []
    assert other[0].result == Result.DUPLICATE_SEQ and rows3 == []
    assert _card(ledger, A).purses[Purse.EPURSE] == 1500
    (row,) = rows
    assert (row.kind, row.result, row.amount_fen, row.d_epurse, row.op_key) == (OpKind.TOP_UP, 0, -500, 500, "k1")
    assert decode_op(row.op) == TopUp("k1", A, Purse.EPURSE, 500)


@pytest.mark.parametrize(
    ("op", "result"),
    [
        (TopUp("x", A, Purse.EPURSE, 0), Result.BAD_TAP),
        (TopUp("x", A, Purse.VOUCHER, 10), Result.BAD_TAP),  # vouchers come only from programmes
        (TopUp("x", A, Purse.EPURSE, 200, max_balance_fen=1100), Result.PURSE_LIMIT),
        (TopUp("x", make_card_no(99), Purse.EPURSE, 10), Result.CARD_UNKNOWN),
        (TopUp("x", C, Purse.EPURSE, 10), Result.CARD_CANCELLED),
        (TopUp("", A, Purse.EPURSE, 10), Result.BAD_TAP),
        (Refund("x", A, Purse.EPURSE, 1001), Result.INSUFFICIENT_FUNDS),
        (Credit("x", A, Purse.DEPOSIT, 10), Result.BAD_TAP),
        (SetStatus("x", A, CardStatus.CANCELLED), Result.BAD_TAP),  # cancelling refunds: Cancel
        (SetApps("x", A, 1 << 10), Result.BAD_TAP),
        (SetProduct("x", A, "yearly_pass", 0, 10), Result.BAD_TAP),
        (SetProfile("x", A, 42, True), Result.BAD_TAP),
        (TransferOut("x", A, A), Result.BAD_TAP),
    ],
)
def test_refused_ops_change_nothing_but_are_journaled(op, result) -> None:  # type: ignore[no-untyped-def]
    ledger = _ledger()
    before = {c: encode_card(card) for c, card in ledger.cards.items()}
    outcomes, rows = ledger.apply_ops([op], NOW_MS)
    assert outcomes[0].result == result
    assert [r.result for r in rows] == [result] and rows[0].amount_fen == 0
    assert {c: encode_card(card) for c, card in ledger.cards.items()} == before


def test_credits_set_expiry_and_categories_and_allowance_pays_the_bus() -> None:
    ledger = _ledger()
    ledger.apply_ops([Credit("v", B, Purse.VOUCHER, 3000, until_ms=NOW_MS + 10**9, categories=("food",)),
                      Credit("t", B, Purse.ALLOWANCE, 500, until_ms=NOW_MS + 10**9)], NOW_MS)
    card = _card(ledger, B)
    assert card.purses[Purse.VOUCHER] == 3000 and card.voucher_categories == frozenset({"food"})
    assert card.voucher_until_ms == card.allowance_until_ms == NOW_MS + 10**9
    outcomes, rows = ledger.apply([Tap(7, 1, B, NOW_MS, TapKind.BUS, route=12)], NOW_MS)
    assert outcomes[0].result == Result.OK and rows[0].d_allowance == -182 and rows[0].d_epurse == 0


def test_status_apps_products_and_profile_change_what_taps_get() -> None:
    ledger = _ledger()
    ledger.apply_ops([SetStatus("s1", A, CardStatus.BLOCKED)], NOW_MS)
    assert ledger.apply([Tap(7, 1, A, NOW_MS, TapKind.BUS, route=12)], NOW_MS)[0][0].result == Result.CARD_BLOCKED
    ledger.apply_ops([SetStatus("s2", A, CardStatus.ACTIVE),
                      SetProduct("p", A, "monthly_pass", NOW_MS - 1000, NOW_MS + 1000),
                      SetApps("a", A, int(App.EPURSE | App.LIBRARY))], NOW_MS)
    out = ledger.apply([Tap(7, 2, A, NOW_MS, TapKind.BUS, route=12),
                        Tap(8, 1, A, NOW_MS, TapKind.LIBRARY, route=1)], NOW_MS)[0]
    assert [(o.result, o.fare_fen) for o in out] == [(Result.OK, 100), (Result.OK, 0)]  # pass: 50 %
    ledger.apply_ops([SetProfile("e", A, Category.ELDERLY, True)], NOW_MS)
    assert _card(ledger, A).category == Category.ELDERLY


def test_cancel_refunds_every_purse_and_is_final() -> None:
    ledger = _ledger()
    ledger.apply_ops([TopUp("g", A, Purse.GENERAL, 300)], NOW_MS)
    outcomes, rows = ledger.apply_ops([Cancel("c", A)], NOW_MS)
    assert outcomes[0].result == Result.OK and rows[0].amount_fen == 1300
    assert outcomes[0].deltas[:2] == (-1000, -300)
    assert sum(_card(ledger, A).purses) == 0 and _card(ledger, A).status == CardStatus.CANCELLED
    assert ledger.apply_ops([TopUp("later", A, Purse.EPURSE, 1)], NOW_MS)[0][0].result == Result.CARD_CANCELLED


def test_cancel_waits_for_an_open_bike_rental() -> None:
    ledger = _ledger()
    ledger.cards[A].credit_good = False
    ledger.cards[A].purses[Purse.EPURSE] = 30_000
    ledger.apply([Tap(7, 1, A, NOW_MS, TapKind.BIKE_RENT, route=3)], NOW_MS)
    assert ledger.apply_ops([Cancel("c", A)], NOW_MS)[0][0].result == Result.RENTAL_OPEN


def test_transfer_moves_everything_exactly_once() -> None:
    ledger = _ledger()
    ledger.apply_ops([TopUp("g", A, Purse.GENERAL, 300),
                      Credit("v", A, Purse.VOUCHER, 50, until_ms=NOW_MS + 5, categories=("food",)),
                      SetProduct("p", A, "park_pass", 1, 2), SetApps("a", A, int(App.EPURSE | App.LIBRARY))], NOW_MS)
    total = ledger.total_balance_fen()
    out, _ = ledger.apply_ops([TransferOut("r:out", A, B)], NOW_MS)
    moved = out[0].moved
    assert moved is not None and moved.purses == (1000, 300, 50, 0, 0, 0) and moved.park_pass == (1, 2)
    # a retry gets the same moved, even from a rebuilt ledger that found the row in the journal
    assert ledger.apply_ops([TransferOut("r:out", A, B)], NOW_MS)[0][0].moved == moved
    ledger.apply_ops([TransferIn("r:in", B, A, moved)], NOW_MS)
    ledger.apply_ops([TransferIn("r:in", B, A, moved)], NOW_MS)
    b = _card(ledger, B)
    assert b.purses == [1000, 300, 50, 0, 0, 0] and b.park_pass == (1, 2) and b.apps == App.EPURSE | App.LIBRARY
    assert b.voucher_categories == frozenset({"food"}) and sum(_card(ledger, A).purses) == 0
    assert ledger.total_balance_fen() == total
    assert ledger.apply([Tap(7, 1, A, NOW_MS, TapKind.BUS, route=12)], NOW_MS)[0][0].result == Result.CARD_CANCELLED


def test_replaying_the_journal_and_the_op_memory() -> None:
    """A rebuilt ledger (cards as issued + journal) equals the live one, and answers old keys."""
    live = _ledger()
    rows = []
    for ops in ([TopUp("t1", A, Purse.EPURSE, 100), Credit("c1", B, Purse.ALLOWANCE, 40, until_ms=NOW_MS + 9)],
                [SetProduct("p1", A, "monthly_pass", 0, NOW_MS * 2), SetStatus("s1", B, CardStatus.BLOCKED)]):
        rows += live.apply_ops(ops, NOW_MS)[1]
        rows += live.apply([Tap(7, len(rows) + 1, A, NOW_MS + len(rows) * 60_000, TapKind.BUS, route=12)], NOW_MS)[1]
    out, more = live.apply_ops([TransferOut("r", A, B)], NOW_MS)
    rows += more
    rebuilt = _ledger()
    for row in rows:
        rebuilt.replay(row, apply_effect=True)
    assert {c: encode_card(x) for c, x in rebuilt.cards.items()} == {c: encode_card(x) for c, x in live.cards.items()}
    assert rebuilt.apply_ops([TransferOut("r", A, B)], NOW_MS)[0][0] == msgspec.structs.replace(out[0], replay=True)
    # a key the memory lost is taken back from its journal row
    fresh = _ledger()
    for row in rows:
        fresh.replay(row, apply_effect=True)
    fresh._ops.clear()
    assert fresh.unknown_op_keys(["t1", "zz"]) == ["t1", "zz"]
    fresh.remember_op(rows[0])
    assert fresh.unknown_op_keys(["t1", "zz"]) == ["zz"]
    assert fresh.apply_ops([TopUp("t1", A, Purse.EPURSE, 100)], NOW_MS)[0][0].replay


def test_op_memory_evicts_only_committed_keys() -> None:
    ledger = _ledger()
    ledger.op_memory_limit = 2
    ledger.apply_ops([TopUp(f"k{i}", A, Purse.EPURSE, 1) for i in range(5)], NOW_MS)
    ledger.evict_ops(committed_lsn=0)
    assert len(ledger._ops) == 5  # nothing committed yet: nothing forgotten
    ledger.evict_ops(committed_lsn=ledger.lsn)
    assert ledger.unknown_op_keys([f"k{i}" for i in range(5)]) == ["k0", "k1", "k2"]


def test_snapshot_keeps_the_whole_card_and_reads_old_snapshots() -> None:
    ledger = _ledger()
    ledger.apply_ops([SetProduct("p", A, "park_pass", 5, 9), SetApps("a", A, int(App.MEDICAL), "employee"),
                      Credit("v", A, Purse.VOUCHER, 5, until_ms=77, categories=("books",)),
                      SetStatus("s", A, CardStatus.BLOCKED)], NOW_MS)
    state = encode_card(ledger.cards[A])
    fresh = CardState(A, CardStatus.ACTIVE, Category.ADULT, 0)
    restore_card(fresh, state)
    assert encode_card(fresh) == state and fresh.status == CardStatus.BLOCKED and fresh.insurance == "employee"
    # a snapshot written before card services (purses, rental, parking, rides, recent) still loads
    old = msgspec.msgpack.encode(([7, 0, 0, 0, 0, 0], None, None, [], [[5, 123]]))
    older = CardState(A, CardStatus.BLOCKED, Category.STUDENT, 0)
    restore_card(older, old)
    assert older.purses == [7, 0, 0, 0, 0, 0] and older.recent == {5: 123} and older.category == Category.STUDENT


def test_ops_round_trip_through_their_encoding() -> None:
    for op in (TopUp("a", A, 0, 1, 2), Cancel("b", B), SetProduct("c", A, "park_pass", 1, 2)):
        assert decode_op(encode_op(op)) == op


def test_a_pass_bought_on_the_new_card_survives_a_late_transfer() -> None:
    ledger = _ledger()
    out, _ = ledger.apply_ops([TransferOut("r:out", A, B)], NOW_MS)  # A holds no pass
    ledger.apply_ops([SetProduct("p", B, "monthly_pass", NOW_MS, NOW_MS + 10)], NOW_MS)
    moved = out[0].moved
    assert moved is not None and moved.monthly_pass is None
    ledger.apply_ops([TransferIn("r:in", B, A, moved)], NOW_MS)
    assert _card(ledger, B).monthly_pass == (NOW_MS, NOW_MS + 10)


def test_a_lost_card_takes_no_counter_money_and_no_product_but_keeps_its_benefits() -> None:
    ledger = _ledger()
    ledger.apply_ops([SetStatus("lost", A, CardStatus.BLOCKED)], NOW_MS)
    refused = [TopUp("t", A, Purse.EPURSE, 500), Refund("r", A, Purse.EPURSE, 100),
               SetProduct("p", A, "monthly_pass", NOW_MS, NOW_MS + 1000)]
    outcomes, rows = ledger.apply_ops(refused, NOW_MS)
    assert [o.result for o in outcomes] == [Result.CARD_BLOCKED] * 3
    assert all(r.amount_fen == 0 and r.result == Result.CARD_BLOCKED for r in rows)
    assert _card(ledger, A).purses[Purse.EPURSE] == 1000
    allowed, _ = ledger.apply_ops([Credit("c", A, Purse.ALLOWANCE, 300, 0), SetApps("a", A, int(App.EPURSE)),
                                   Cancel("x", A)], NOW_MS)
    assert [o.result for o in allowed] == [Result.OK] * 3
    assert _card(ledger, A).status == CardStatus.CANCELLED
