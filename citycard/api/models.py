"""HTTP shapes shared by route modules (money answers are also self-service answers), so no
route module imports another."""

from dataclasses import asdict
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool

from ..cards import applications, money
from ..cards.holders import CATEGORY_NAMES
from ..cards.lookup import STATUS_NAMES
from ..cards.services import CardInfo
from ..domain.ops import MAX_OP_FEN
from .routes.common import IdempotencyKey, ReasonText, Text

PurseName = Literal["epurse", "general"]


class MoneyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purse: PurseName = "epurse"
    amount_fen: int = Field(strict=True, gt=0, le=MAX_OP_FEN)  # strict: not true, "250" or 250.0
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
    ledger: Literal["account"] = Field("account", description="the platform's account journal")


class PurseTxn(BaseModel):
    ledger: Literal["card_purse"] = Field("card_purse", description="the purse on the card's chip (city-pass)")
    kind: Literal["offline_purchase", "load"]
    counter: int = Field(description="the card's offline (purchase) or online (load) counter before it")
    amount_fen: int
    balance_after_fen: int = Field(description="the chip's purse after, as the card reported it")
    terminal_id: int
    card_when: int = Field(description="YYYYMMDDhhmmss the card's MACs cover")
    at_ms: int = Field(description="when the host recorded it")
    state: str = Field(description="purchases: accepted, balance_impossible; loads: pending, confirmed")


class Page(BaseModel):
    card_no: int
    items: list[Txn]
    next_before_lsn: int | None = Field(description="pass as before_lsn for the next (older) page")
    card_purse: list[PurseTxn] = Field([], description="first page only: the chip's purse, newest first")
    shadow_balance_fen: int | None = Field(None, description="the host's shadow of the chip's purse")


def page_of(page: money.Page) -> Page:
    return Page(card_no=page.card_no, items=[Txn(**t.__dict__) for t in page.items],
                next_before_lsn=page.next_before_lsn,
                card_purse=[PurseTxn(**p.__dict__) for p in page.card_purse],
                shadow_balance_fen=page.shadow_balance_fen)


# -- cards ---------------------------------------------------------------------------------
class Apps(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epurse: StrictBool = True
    online: StrictBool = True
    library: StrictBool = False
    medical: StrictBool = False
    insurance: Text = Field("", max_length=40, description="insurance category; required with medical")
    medical_from_purse: StrictBool = Field(False, description="self-pay may come from the ordinary purses")
    merchant_member: StrictBool = False


class Validity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    valid_from: AwareDatetime
    valid_until: AwareDatetime


class Card(BaseModel):
    card_no: int
    holder_id: int | None
    status: str
    category: str
    apps: Apps
    credit_good: bool
    purses: dict[str, int]
    total_fen: int
    monthly_pass: Validity | None
    park_pass: Validity | None
    voucher_until_ms: int
    voucher_categories: list[str]
    allowance_until_ms: int
    bike_rental_open: bool
    parking_open: bool
    shadow_balance_fen: int | None = Field(
        None, description="the host's shadow of the chip's purse: loads less offline purchases (GET only)")


def _validity(window: tuple[int, int] | None) -> Validity | None:
    if window is None:
        return None
    return Validity(valid_from=datetime.fromtimestamp(window[0] / 1000).astimezone(),
                    valid_until=datetime.fromtimestamp(window[1] / 1000).astimezone())


def apps_choice(a: Apps) -> applications.Apps:
    return applications.Apps(**a.model_dump())


def card_model(info: CardInfo) -> Card:
    view = info.view
    return Card(card_no=view.card_no, holder_id=info.holder_id, status=STATUS_NAMES.get(view.status, "blocked"),
                category=CATEGORY_NAMES.get(view.category, "adult"),
                apps=Apps(**asdict(applications.apps_of(view))), credit_good=view.credit_good,
                purses=view.purses, total_fen=view.total_fen, monthly_pass=_validity(view.monthly_pass),
                park_pass=_validity(view.park_pass), voucher_until_ms=view.voucher_until_ms,
                voucher_categories=list(view.voucher_categories), allowance_until_ms=view.allowance_until_ms,
                bike_rental_open=view.rental_open, parking_open=view.parking_open)
