"""Cardholder card state as the owning shard keeps it in memory."""

from enum import IntEnum


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


class CardState:
    __slots__ = ("card_no", "status", "category", "balance_fen")

    def __init__(self, card_no: int, status: int, category: int, balance_fen: int) -> None:
        self.card_no = card_no
        self.status = status
        self.category = category
        self.balance_fen = balance_fen

    def __repr__(self) -> str:
        return (
            f"CardState(card_no={self.card_no}, status={self.status}, "
            f"category={self.category}, balance_fen={self.balance_fen})"
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
