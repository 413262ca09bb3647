"""What docs/protocol.md now says (issue 16): PASSBACK's place in the refusal order, and that
`balance_fen` is the e-purse only."""

from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import CardState, CardStatus, Category, make_card_no
from citycard.domain.ledger import Ledger
from citycard.domain.purses import Purse
from citycard.domain.results import Result
from citycard.domain.taps import Tap, TapKind

NOW_MS = 1_700_000_000_000
T0_MS = NOW_MS - 86_400_000
CARD = make_card_no(1001)


def _ledger(epurse_fen: int, allowance_fen: int = 0) -> Ledger:
    ledger = Ledger(shard_id=0, tables=shipped_tables())
    card = CardState(CARD, CardStatus.ACTIVE, Category.ADULT, epurse_fen)
    card.purses[Purse.ALLOWANCE] = allowance_fen
    ledger.add_card(card)
    return ledger


def test_passback_comes_before_insufficient_funds_and_the_kinds_fields() -> None:
    ledger = _ledger(200)  # one ride (182 fen), then 18 fen left
    taps = [Tap(7, 1, CARD, T0_MS, TapKind.BUS, route=12),
            Tap(7, 2, CARD, T0_MS + 5_000, TapKind.BUS, route=12),  # could not pay either
            Tap(7, 3, CARD, T0_MS + 6_000, TapKind.BUS, route=0)]  # route 0 alone is BAD_TAP
    outcomes, _ = ledger.apply(taps, NOW_MS)
    assert [o.result for o in outcomes] == [Result.OK, Result.PASSBACK, Result.PASSBACK]
    later, _ = ledger.apply([Tap(7, 4, CARD, T0_MS + 40_000, TapKind.BUS, route=12),
                             Tap(7, 5, CARD, T0_MS + 80_000, TapKind.BUS, route=0)], NOW_MS)
    assert [o.result for o in later] == [Result.INSUFFICIENT_FUNDS, Result.BAD_TAP]


def test_balance_fen_is_the_epurse_a_taxi_paid_from_the_allowance_leaves_it() -> None:
    ledger = _ledger(1000, allowance_fen=5000)
    [o], _ = ledger.apply([Tap(7, 1, CARD, T0_MS, TapKind.TAXI, amount_fen=3000)], NOW_MS)
    assert (o.result, o.fare_fen, o.balance_fen) == (Result.OK, 3000, 1000)
    assert ledger.cards[CARD].purses[Purse.ALLOWANCE] == 2000
