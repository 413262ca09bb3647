"""Cards over HTTP: issue, status and balances, applications, products, loss reports,
cancellation; the card-services layer (cards/lifecycle.py, cards/applications.py) does the work."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ...cards import applications, lifecycle
from ...cards.services import card_info
from ...persistence import offline as offline_store
from ..auth import Operator, Perm, require
from ..errors import ApiError
from ..models import Apps, Card, Validity, apps_choice, card_model
from ..strict_route import StrictRoute
from .common import CardNo, HolderId, IdempotencyKey, ReasonText, ctx_of

router = APIRouter(tags=["cards"], route_class=StrictRoute)
Product = Annotated[Literal["monthly_pass", "park_pass"], Path(description="monthly bus pass or park annual pass")]


class IssueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    apps: Apps = Apps()
    credit_good: StrictBool = True


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: ReasonText = Field(min_length=1, max_length=500)


class CancelIn(Reason):
    idempotency_key: IdempotencyKey


@router.post("/holders/{holder_id}/cards", status_code=201, response_model=Card)
async def issue(holder_id: HolderId, body: IssueIn, request: Request,
                op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Issue a card to a holder who has no live card (a lost card is replaced instead)."""
    svc = ctx_of(request).services
    return card_model(await lifecycle.issue(svc, op, holder_id, apps_choice(body.apps), body.credit_good))


@router.get("/cards/{card_no}", response_model=Card)
async def get_card(card_no: CardNo, request: Request,
                   op: Operator = Depends(require(Perm.READ))) -> Card:  # noqa: B008
    """Status, balances of every purse, applications and products, as the card's shard holds them;
    and the host's shadow of the chip's purse (city-pass)."""
    ctx = ctx_of(request)
    out = card_model(await card_info(ctx.services, card_no))
    shadow = await offline_store.shadow(ctx.pool, card_no)
    out.shadow_balance_fen = None if shadow is None else shadow.balance_fen
    return out


@router.put("/cards/{card_no}/apps", response_model=Card)
async def set_apps(card_no: CardNo, body: Apps, request: Request,
                   op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Enable or disable applications: e-purse, online account, health insurance, library, merchant alliance."""
    return card_model(await applications.set_apps(ctx_of(request).services, op, card_no, apps_choice(body)))


@router.put("/cards/{card_no}/products/{product}", response_model=Card)
async def set_product(card_no: CardNo, product: Product, body: Validity, request: Request,
                      op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Buy or renew a monthly bus pass or a park annual pass: its validity [from, until)."""
    from_ms, until_ms = int(body.valid_from.timestamp() * 1000), int(body.valid_until.timestamp() * 1000)
    if until_ms <= from_ms:
        raise ApiError(422, "valid_until: must be after valid_from", field="valid_until")
    if from_ms < 0:
        raise ApiError(422, "valid_from: before 1970", field="valid_from")
    svc = ctx_of(request).services
    return card_model(await applications.set_product(svc, op, card_no, product, from_ms, until_ms))


@router.delete("/cards/{card_no}/products/{product}", response_model=Card)
async def remove_product(card_no: CardNo, product: Product, request: Request,
                         op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    return card_model(await applications.set_product(ctx_of(request).services, op, card_no, product, 0, 0))


@router.post("/cards/{card_no}/loss", response_model=Card)
async def report_loss(card_no: CardNo, body: Reason, request: Request,
                      op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Report a card lost: on the hotlist at every gateway within a second, then blocked in its shard."""
    return card_model(await lifecycle.set_lost(ctx_of(request).services, op, card_no, body.reason, lost=True))


@router.post("/cards/{card_no}/loss/cancel", response_model=Card)
async def cancel_loss(card_no: CardNo, body: Reason, request: Request,
                      op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """The card was found: off the hotlist and active again (a cancelled card stays cancelled)."""
    return card_model(await lifecycle.set_lost(ctx_of(request).services, op, card_no, body.reason, lost=False))


@router.post("/cards/{card_no}/cancel", response_model=Card)
async def cancel_card(card_no: CardNo, body: CancelIn, request: Request,
                      op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Cancel a card for good; every purse is refunded to the holder (the response shows the
    card emptied; the refunded amounts are in the audit log and the history)."""
    svc = ctx_of(request).services
    return card_model(await lifecycle.cancel(svc, op, card_no, body.idempotency_key, body.reason))
