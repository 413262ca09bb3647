"""HTTP shapes of the merchant desk (routes/merchants.py)."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..persistence.merchants import MAX_MERCHANT_ID, MAX_TERMINAL_ID, MAX_TERMINALS_PER_CALL
from .routes.common import Text

MerchantIdIn = Annotated[int, Field(strict=True, ge=1, le=MAX_MERCHANT_ID,
                                    description="the merchant's id: the route its POS terminals send")]
TerminalIdIn = Annotated[int, Field(strict=True, ge=1, le=MAX_TERMINAL_ID)]
Percent = Annotated[int, Field(strict=True, ge=0, le=100, description="members pay (100 - this) %")]
CommissionBp = Annotated[int, Field(strict=True, ge=0, le=10_000,
                                    description="the contract's commission in basis points (the card system keeps it)")]
Category = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,40}$"),
                     Field(description="one of the fare table's merchant categories (retail, books, dining, ...)")]
Name = Annotated[Text, StringConstraints(min_length=1, max_length=200, strip_whitespace=False)]
EpochMs = Annotated[int, Field(strict=True, ge=0, le=2**53)]


class MerchantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merchant_id: MerchantIdIn
    name: Name
    category: Category
    member_discount_percent: Percent
    commission_bp: CommissionBp
    terminal_ids: list[TerminalIdIn] = Field([], max_length=MAX_TERMINALS_PER_CALL,
                                             description="its POS terminals (kind merchant, route = merchant_id)")


class TerminalsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terminal_ids: list[TerminalIdIn] = Field(min_length=1, max_length=MAX_TERMINALS_PER_CALL)


class DiscountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member_discount_percent: Percent
    effective_from_ms: EpochMs = Field(description="Unix ms, not before now: a change is never retroactive")


class Discount(BaseModel):
    effective_from_ms: int
    member_discount_percent: int
    set_by: str


class MerchantTerminal(BaseModel):
    terminal_id: int
    enabled: bool


class Merchant(BaseModel):
    merchant_id: int
    name: str
    category: str
    commission_bp: int
    counterparty_id: str = Field(description="its settlement counterparty (docs/settlement.md)")
    registered_ms: int
    registered_by: str
    member_discount_percent: int = Field(description="in force now")
    discounts: list[Discount] = Field(description="every discount by effective time, future ones included")
    terminals: list[MerchantTerminal]


class MerchantBrief(BaseModel):
    merchant_id: int
    name: str
    category: str
    commission_bp: int
    registered_ms: int
    terminals: int


class MerchantWindow(BaseModel):
    merchant_id: int
    counterparty_id: str
    window_id: str
    state: str = Field(description="open: the line is not booked yet (its figures are 0)")
    taps: int
    gross_fen: int = Field(description="what its customers paid (after member discounts)")
    commission_fen: int
    net_fen: int = Field(description="what the card system owes the merchant")
    member_taps: int
    member_discount_fen: int = Field(description="member discounts given: the amounts asked less those paid")
