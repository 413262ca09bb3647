"""Cardholder card state as the owning shard keeps it in memory."""

from enum import IntEnum, IntFlag

import msgspec


class CardStatus(IntEnum):
    ACTIVE = 0
    BLOCKED = 1  # reported lost or blocked by the operator
    CANCELLED = 2  # cancelled or replaced; never active again


class Category(IntEnum):
    """Population group; concessions by group come with the full fare rules."""

    ADULT = 0
    STUDENT = 1
    ELDERLY = 2
    DISABLED = 3


class App(IntFlag):
    """Applications enabled on a card."""

    EPURSE = 1
    ONLINE = 2
    LIBRARY = 4
    MEDICAL = 8
    MERCHANT_MEMBER = 16


DEFAULT_APPS = App.EPURSE | App.ONLINE


class CardState:
    """Everything the owning shard knows of one card. Purses are integer fen, by Purse index.

    Validity windows are [from_ms, until_ms). Open bike rental and parking session, ride
    counters and the anti-passback memory are the state the fare rules keep between taps.
    """

    __slots__ = (
        "card_no", "status", "category", "purses", "apps", "credit_good", "insurance", "medical_from_purse",
        "monthly_pass", "park_pass", "voucher_until_ms", "voucher_categories", "allowance_until_ms",
        "rental", "parking", "rides", "recent",
    )

    def __init__(
        self,
        card_no: int,
        status: int,
        category: int,
        balance_fen: int,
        *,
        purses: list[int] | None = None,
        apps: int = int(DEFAULT_APPS),
        credit_good: bool = True,
        insurance: str = "",
        medical_from_purse: bool = False,
        monthly_pass: tuple[int, int] | None = None,
        park_pass: tuple[int, int] | None = None,
        voucher_until_ms: int = 0,
        voucher_categories: frozenset[str] = frozenset(),
        allowance_until_ms: int = 0,
    ) -> None:
        self.card_no = card_no
        self.status = status
        self.category = category
        self.purses = list(purses) if purses is not None else [balance_fen, 0, 0, 0, 0, 0]
        if purses is None:
            self.purses[0] = balance_fen
        self.apps = apps
        self.credit_good = credit_good
        self.insurance = insurance  # insurance category name; "" = not insured
        self.medical_from_purse = medical_from_purse
        self.monthly_pass = monthly_pass  # (from_ms, until_ms)
        self.park_pass = park_pass
        self.voucher_until_ms = voucher_until_ms  # 0 = no expiry
        self.voucher_categories = voucher_categories  # merchant categories vouchers may pay
        self.allowance_until_ms = allowance_until_ms
        self.rental: tuple[int, int, int] | None = None  # (dock, start_ms, deposit_fen)
        self.parking: tuple[int, int] | None = None  # (lot, entry_ms)
        self.rides: dict[tuple[int, int], int] | None = None  # (concession, day) -> rides
        self.recent: dict[int, int] | None = None  # terminal_id -> last charged tap time_ms

    @property
    def balance_fen(self) -> int:
        """The city-pass e-purse."""
        return self.purses[0]

    @balance_fen.setter
    def balance_fen(self, value: int) -> None:
        self.purses[0] = value

    def total_fen(self) -> int:
        return sum(self.purses)

    def __repr__(self) -> str:
        return (
            f"CardState(card_no={self.card_no}, status={self.status}, "
            f"category={self.category}, purses={self.purses})"
        )


HANGZHOU_ISSUER = 330100  # issuer prefix: the city's administrative code


def luhn_digit(number: int) -> int:
    """Check digit (Luhn, as on bank cards) to append to ``number``."""
    total = 0
    for i, ch in enumerate(reversed(str(number))):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def make_card_no(serial: int, issuer: int = HANGZHOU_ISSUER) -> int:
    """Card number: issuer prefix, 10-digit serial, Luhn check digit (17 digits for 6-digit issuers)."""
    if not 0 <= serial < 10**10:
        raise ValueError("serial must have at most 10 digits")
    body = issuer * 10**10 + serial
    return body * 10 + luhn_digit(body)


def card_no_valid(card_no: int) -> bool:
    return card_no > 9 and luhn_digit(card_no // 10) == card_no % 10


def issuer_of(card_no: int) -> int:
    return card_no // 10**11


# -- snapshot encoding of everything taps and card services change ---------------------------
_STATE = msgspec.msgpack.Encoder()
_TAP_STATE = tuple[list[int], tuple[int, int, int] | None, tuple[int, int] | None,
                   list[tuple[int, int, int]], list[tuple[int, int]]]
# status, category, apps, credit_good, insurance, medical_from_purse, monthly_pass, park_pass,
# voucher_until_ms, voucher_categories, allowance_until_ms: changed by card services
_PROFILE = tuple[int, int, int, bool, str, bool, tuple[int, int] | None, tuple[int, int] | None, int,
                 list[str], int]
_STATE_DECODER = msgspec.msgpack.Decoder(tuple[list[int], tuple[int, int, int] | None, tuple[int, int] | None,
                                               list[tuple[int, int, int]], list[tuple[int, int]], _PROFILE])
_OLD_STATE_DECODER = msgspec.msgpack.Decoder(_TAP_STATE)  # snapshots taken before card services


def encode_card(card: CardState) -> bytes:
    rides = [(i, day, n) for (i, day), n in card.rides.items()] if card.rides else []
    recent = list(card.recent.items()) if card.recent else []
    profile = (card.status, card.category, card.apps, card.credit_good, card.insurance, card.medical_from_purse,
               card.monthly_pass, card.park_pass, card.voucher_until_ms, sorted(card.voucher_categories),
               card.allowance_until_ms)
    return _STATE.encode((card.purses, card.rental, card.parking, rides, recent, profile))


def restore_card(card: CardState, state: bytes) -> None:
    """Put a snapshot's state back on a card loaded from the cards table."""
    try:
        purses, rental, parking, rides, recent, profile = _STATE_DECODER.decode(state)
    except msgspec.ValidationError:
        purses, rental, parking, rides, recent = _OLD_STATE_DECODER.decode(state)
        profile = None
    card.purses = list(purses)
    card.rental = rental
    card.parking = parking
    card.rides = {(i, day): n for i, day, n in rides} or None
    card.recent = dict(recent) or None
    if profile is not None:
        (card.status, card.category, card.apps, card.credit_good, card.insurance, card.medical_from_purse,
         card.monthly_pass, card.park_pass, card.voucher_until_ms, categories, card.allowance_until_ms) = profile
        card.voucher_categories = frozenset(categories)
