"""Card services that change a card: money in and out, status, applications, products, and
the two halves of a card replacement. Pure, like the tap rules.

Each op carries an idempotency key; the owning shard applies it at most once and journals it
with its deltas and its encoded self, so a replay of the journal rebuilds the same card.
"""

from enum import IntEnum

import msgspec

from .cards import App, CardState, CardStatus, Category
from .purses import N_PURSES, Purse
from .results import Result
from .views import CardView

MAX_KEY_CHARS = 200
MAX_OP_FEN = 10**11  # one op moves at most 1 billion yuan: anything more is a typo


class OpKind(IntEnum):
    """Journal ``kind`` of service rows (taps use 1..99)."""

    TOP_UP = 101
    REFUND = 102
    CREDIT = 103
    SET_STATUS = 104
    SET_APPS = 105
    SET_PRODUCT = 106
    SET_PROFILE = 107
    CANCEL = 108
    TRANSFER_OUT = 109
    TRANSFER_IN = 110


class _Op(msgspec.Struct, tag_field="op", frozen=True, forbid_unknown_fields=True):
    key: str
    card_no: int


class TopUp(_Op, tag="top_up", frozen=True):
    purse: int  # EPURSE or GENERAL
    amount_fen: int
    max_balance_fen: int = 0  # the purse's cap after the top-up; 0 = none


class Refund(_Op, tag="refund", frozen=True):
    """Money paid back to the holder out of one purse."""

    purse: int
    amount_fen: int


class Credit(_Op, tag="credit", frozen=True):
    """A disbursement: welfare, subsidy, allowance or vouchers."""

    purse: int
    amount_fen: int
    until_ms: int = 0  # voucher / allowance expiry (0 = keep the card's)
    categories: tuple[str, ...] = ()  # voucher merchant categories added


class SetStatus(_Op, tag="set_status", frozen=True):
    status: int  # ACTIVE or BLOCKED (loss report and its cancellation)


class SetApps(_Op, tag="set_apps", frozen=True):
    apps: int  # App flags, the whole set
    insurance: str = ""  # insurance category when MEDICAL is enabled
    medical_from_purse: bool = False


class SetProduct(_Op, tag="set_product", frozen=True):
    product: str  # "monthly_pass" | "park_pass"
    from_ms: int
    until_ms: int  # until_ms <= from_ms removes the product


class SetProfile(_Op, tag="set_profile", frozen=True):
    category: int
    credit_good: bool


class Cancel(_Op, tag="cancel", frozen=True):
    """Cancel the card for good; every purse is paid back to the holder."""


class Moved(msgspec.Struct, frozen=True, array_like=True):
    """What a replacement carries from the old card to the new one."""

    purses: tuple[int, ...]
    apps: int
    category: int
    credit_good: bool
    insurance: str
    medical_from_purse: bool
    monthly_pass: tuple[int, int] | None
    park_pass: tuple[int, int] | None
    voucher_until_ms: int
    voucher_categories: tuple[str, ...]
    allowance_until_ms: int


class TransferOut(_Op, tag="transfer_out", frozen=True):
    """First half of a replacement: the old card is cancelled and emptied."""

    to_card: int


class TransferIn(_Op, tag="transfer_in", frozen=True):
    """Second half: the new card receives what the old one held."""

    from_card: int
    moved: Moved


CardOp = TopUp | Refund | Credit | SetStatus | SetApps | SetProduct | SetProfile | Cancel | TransferOut | TransferIn
OP_KIND: dict[type, int] = {
    TopUp: OpKind.TOP_UP, Refund: OpKind.REFUND, Credit: OpKind.CREDIT, SetStatus: OpKind.SET_STATUS,
    SetApps: OpKind.SET_APPS, SetProduct: OpKind.SET_PRODUCT, SetProfile: OpKind.SET_PROFILE,
    Cancel: OpKind.CANCEL, TransferOut: OpKind.TRANSFER_OUT, TransferIn: OpKind.TRANSFER_IN,
}
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[CardOp] = msgspec.msgpack.Decoder(CardOp)


def encode_op(op: CardOp) -> bytes:
    return _encoder.encode(op)


def decode_op(data: bytes) -> CardOp:
    return _decoder.decode(data)


class OpOutcome(msgspec.Struct, frozen=True, array_like=True, gc=False):  # made per op: out of the cyclic GC
    result: int
    deltas: tuple[int, ...] = (0,) * N_PURSES  # per purse, by Purse index
    balance_after_fen: int = -1  # e-purse after the op (-1: card unknown)
    moved: Moved | None = None  # TransferOut: what the new card must receive
    replay: bool = False  # a retry answered with the first outcome
    # The card after the op, as its shard answers it (None in the op memory and the journal,
    # and for an unknown card): a caller needs no second call to show the result.
    view: CardView | None = None


_TOP_UP_PURSES = frozenset((Purse.EPURSE, Purse.GENERAL))
_CREDIT_PURSES = frozenset((Purse.EPURSE, Purse.GENERAL, Purse.VOUCHER, Purse.ALLOWANCE, Purse.MEDICAL))
_REFUND_PURSES = frozenset((Purse.EPURSE, Purse.GENERAL))
_NO_CHANGE = (0,) * N_PURSES
# A lost card takes no money in or out at a counter and no new product: whoever holds it
# cannot spend, and the holder's money leaves by a replacement or a cancellation. Credits
# (benefits) still arrive and move on with a replacement; docs/api.md has the whole table.
_REFUSED_WHEN_BLOCKED = (TopUp, Refund, SetProduct)


def _bad_amount(amount_fen: int) -> bool:
    return not 0 < amount_fen <= MAX_OP_FEN


def decide_op(card: CardState | None, op: CardOp) -> tuple[int, tuple[int, ...], Moved | None]:
    """(result, per-purse deltas, moved) for ``op`` on ``card``. Reads the card, never changes it."""
    if card is None:
        return Result.CARD_UNKNOWN, _NO_CHANGE, None
    if not op.key or len(op.key) > MAX_KEY_CHARS:
        return Result.BAD_TAP, _NO_CHANGE, None
    if card.status == CardStatus.CANCELLED:
        return Result.CARD_CANCELLED, _NO_CHANGE, None
    if card.status == CardStatus.BLOCKED and isinstance(op, _REFUSED_WHEN_BLOCKED):
        return Result.CARD_BLOCKED, _NO_CHANGE, None
    if isinstance(op, TopUp):
        if op.purse not in _TOP_UP_PURSES or _bad_amount(op.amount_fen):
            return Result.BAD_TAP, _NO_CHANGE, None
        if op.max_balance_fen and card.purses[op.purse] + op.amount_fen > op.max_balance_fen:
            return Result.PURSE_LIMIT, _NO_CHANGE, None
        return Result.OK, _delta(op.purse, op.amount_fen), None
    if isinstance(op, Credit):
        if op.purse not in _CREDIT_PURSES or _bad_amount(op.amount_fen) or op.until_ms < 0:
            return Result.BAD_TAP, _NO_CHANGE, None
        return Result.OK, _delta(op.purse, op.amount_fen), None
    if isinstance(op, Refund):
        if op.purse not in _REFUND_PURSES or _bad_amount(op.amount_fen):
            return Result.BAD_TAP, _NO_CHANGE, None
        if card.purses[op.purse] < op.amount_fen:
            return Result.INSUFFICIENT_FUNDS, _NO_CHANGE, None
        return Result.OK, _delta(op.purse, -op.amount_fen), None
    if isinstance(op, SetStatus):
        if op.status not in (CardStatus.ACTIVE, CardStatus.BLOCKED):
            return Result.BAD_TAP, _NO_CHANGE, None
        return Result.OK, _NO_CHANGE, None
    if isinstance(op, SetApps):
        if op.apps < 0 or op.apps & ~int(App.EPURSE | App.ONLINE | App.LIBRARY | App.MEDICAL | App.MERCHANT_MEMBER):
            return Result.BAD_TAP, _NO_CHANGE, None
        return Result.OK, _NO_CHANGE, None
    if isinstance(op, SetProduct):
        if op.product not in ("monthly_pass", "park_pass") or op.from_ms < 0:
            return Result.BAD_TAP, _NO_CHANGE, None
        return Result.OK, _NO_CHANGE, None
    if isinstance(op, SetProfile):
        if op.category not in Category._value2member_map_:
            return Result.BAD_TAP, _NO_CHANGE, None
        return Result.OK, _NO_CHANGE, None
    if isinstance(op, TransferIn):
        if card.status != CardStatus.ACTIVE:
            return Result.CARD_BLOCKED, _NO_CHANGE, None
        m = op.moved
        if len(m.purses) != N_PURSES or any(p < 0 for p in m.purses) or m.purses[Purse.DEPOSIT]:
            return Result.BAD_TAP, _NO_CHANGE, None
        return Result.OK, tuple(m.purses), None
    # Cancel and TransferOut empty the card: not while a deposit is held for an open rental
    if card.rental is not None:
        return Result.RENTAL_OPEN, _NO_CHANGE, None
    if card.parking is not None:
        return Result.PARKING_SESSION_OPEN, _NO_CHANGE, None
    deltas = tuple(-p for p in card.purses)
    if isinstance(op, TransferOut):
        if op.to_card == card.card_no:
            return Result.BAD_TAP, _NO_CHANGE, None
        # A library deposit still held goes over as e-purse money: the new card holds no loan.
        return Result.OK, deltas, moved_from(card, tuple(-d for d in deltas))
    return Result.OK, deltas, None  # Cancel


def _delta(purse: int, amount_fen: int) -> tuple[int, ...]:
    d = [0] * N_PURSES
    d[purse] = amount_fen
    return tuple(d)


def moved_from(card: CardState, purses: tuple[int, ...]) -> Moved:
    """What a replacement moves: ``purses`` as they were, deposit folded into the e-purse."""
    p = list(purses)
    p[Purse.EPURSE] += p[Purse.DEPOSIT]
    p[Purse.DEPOSIT] = 0
    return Moved(tuple(p), card.apps, card.category, card.credit_good, card.insurance, card.medical_from_purse,
                 card.monthly_pass, card.park_pass, card.voucher_until_ms, tuple(sorted(card.voucher_categories)),
                 card.allowance_until_ms)


def apply_op_effects(card: CardState, op: CardOp, deltas: tuple[int, ...] | list[int]) -> None:
    """Change the card as an OK op says; the same code replays the journal."""
    purses = card.purses
    for i, d in enumerate(deltas):
        if d:
            purses[i] += d
    if isinstance(op, Credit):
        if op.purse == Purse.VOUCHER:
            if op.until_ms:
                card.voucher_until_ms = max(card.voucher_until_ms, op.until_ms)
            if op.categories:
                card.voucher_categories = card.voucher_categories | frozenset(op.categories)
        elif op.purse == Purse.ALLOWANCE and op.until_ms:
            card.allowance_until_ms = max(card.allowance_until_ms, op.until_ms)
    elif isinstance(op, SetStatus):
        card.status = op.status
    elif isinstance(op, SetApps):
        card.apps = op.apps
        card.insurance = op.insurance if op.apps & App.MEDICAL else ""
        card.medical_from_purse = op.medical_from_purse
    elif isinstance(op, SetProduct):
        window = (op.from_ms, op.until_ms) if op.until_ms > op.from_ms else None
        if op.product == "monthly_pass":
            card.monthly_pass = window
        else:
            card.park_pass = window
    elif isinstance(op, SetProfile):
        card.category = op.category
        card.credit_good = op.credit_good
    elif isinstance(op, (Cancel, TransferOut)):
        card.status = CardStatus.CANCELLED
    elif isinstance(op, TransferIn):
        m = op.moved
        card.apps = m.apps
        card.category = m.category
        card.credit_good = m.credit_good
        card.insurance = m.insurance
        card.medical_from_purse = m.medical_from_purse
        # a pass bought on the new card meanwhile is kept: the window that ends later wins
        card.monthly_pass = _later(card.monthly_pass, m.monthly_pass)
        card.park_pass = _later(card.park_pass, m.park_pass)
        card.voucher_until_ms = max(card.voucher_until_ms, m.voucher_until_ms)
        card.voucher_categories = card.voucher_categories | frozenset(m.voucher_categories)
        card.allowance_until_ms = max(card.allowance_until_ms, m.allowance_until_ms)


def _later(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None or (b is not None and b[1] > a[1]):
        return b
    return a
