"""What the owning shard shows of one card to the card services: typed, so it crosses the
Ray boundary packed and is read by attribute, never by string key."""

import msgspec

from .cards import CardState
from .purses import PURSE_NAMES


class CardView(msgspec.Struct, frozen=True, kw_only=True):
    card_no: int
    status: int  # CardStatus
    category: int  # Category
    apps: int  # App flags
    credit_good: bool
    insurance: str  # insurance category name; "" = not insured
    medical_from_purse: bool
    purses: dict[str, int]  # fen, by purse name (PURSE_NAMES)
    total_fen: int
    monthly_pass: tuple[int, int] | None  # (from_ms, until_ms)
    park_pass: tuple[int, int] | None
    voucher_until_ms: int
    voucher_categories: tuple[str, ...]
    allowance_until_ms: int
    rental_open: bool  # a bike is out on this card (its deposit is held)
    parking_open: bool  # the card is inside a car park


def view_of(card: CardState | None) -> CardView | None:
    if card is None:
        return None
    return CardView(
        card_no=card.card_no, status=card.status, category=card.category, apps=int(card.apps),
        credit_good=card.credit_good, insurance=card.insurance, medical_from_purse=card.medical_from_purse,
        purses=dict(zip(PURSE_NAMES, card.purses, strict=True)), total_fen=sum(card.purses),
        monthly_pass=card.monthly_pass, park_pass=card.park_pass, voucher_until_ms=card.voucher_until_ms,
        voucher_categories=tuple(sorted(card.voucher_categories)), allowance_until_ms=card.allowance_until_ms,
        rental_open=card.rental is not None, parking_open=card.parking is not None,
    )
