"""HTTP shapes shared by route modules (money answers are also self-service answers), so no
route module imports another."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..cards import money
from ..domain.ops import MAX_OP_FEN
from .routes.common import IdempotencyKey, ReasonText

PurseName = Literal["epurse", "general"]


class MoneyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purse: PurseName = "epurse"
    amount_fen: int = Field(gt=0, le=MAX_OP_FEN)
    idempotency_key: IdempotencyKey


class RefundIn(MoneyIn):
    reason: ReasonText = Field(min_length=1, max_length=500)


class Movement(BaseModel):
    card_no: int
    result: str
    replay: bool = Field(description="true: a retry, answered with the first outcome")
    purses_fen: dict[str, int] = Field(description="the change per purse")
    balance: dict[str, int]


class Balance(BaseModel):
    card_no: int
    status: str
    purses: dict[str, int]
    total_fen: int


class Txn(BaseModel):
    lsn: int
    kind: str
    result: str
    at_ms: int
    terminal_id: int
    amount_fen: int = Field(description="paid by the holder; negative: money in")
    purses_fen: dict[str, int]
    balance_after_fen: int = Field(description="e-purse after")


class Page(BaseModel):
    card_no: int
    items: list[Txn]
    next_before_lsn: int | None = Field(description="pass as before_lsn for the next (older) page")


def page_of(page: money.Page) -> Page:
    return Page(card_no=page.card_no, items=[Txn(**t.__dict__) for t in page.items],
                next_before_lsn=page.next_before_lsn)
