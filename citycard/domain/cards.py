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
