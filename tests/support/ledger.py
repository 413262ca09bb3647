"""Views of the pure ledger that several suites compare."""

from typing import Any

from citycard.domain.cards import encode_card
from citycard.domain.ledger import Ledger


def card_states(ledger: Ledger) -> dict[int, tuple[Any, ...]]:
    """Everything taps change on each card: all purses, the open rental and parking session,
    and the encoded state a snapshot stores (ride counters and anti-passback memory too)."""
    return {
        c.card_no: (list(c.purses), c.rental, c.parking, encode_card(c))
        for c in ledger.cards.values()
    }
