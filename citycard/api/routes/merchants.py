"""The merchant-alliance desk over HTTP: merchants, their POS terminals, member discounts and
their settlement lines. The card-services layer (cards/merchants.py) does the work."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from ...cards import merchants
from ...persistence.merchants import MAX_LIST, MAX_MERCHANT_ID, NewMerchant
from ..auth import Operator, Perm, require
from ..merchant_models import (
    DiscountIn,
    Merchant,
    MerchantBrief,
    MerchantIn,
    MerchantWindow,
    TerminalsIn,
)
from ..strict_route import StrictRoute
from .common import ctx_of

router = APIRouter(tags=["merchants"], route_class=StrictRoute)

MerchantId = Annotated[int, Path(ge=1, le=MAX_MERCHANT_ID)]
WindowId = Annotated[str, Path(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
_CREATED: dict[int | str, dict[str, Any]] = {201: {"model": Merchant, "description": "registered now"}}


def _desk(request: Request) -> merchants.Desk:
    ctx = ctx_of(request)
    return merchants.Desk(ctx.pool, ctx.shards, ctx.settings.fare_table_path())


@router.post("/merchants", response_model=Merchant, responses=_CREATED)
async def register_merchant(body: MerchantIn, request: Request, response: Response,
                            op: Operator = Depends(require(Perm.MERCHANTS))) -> Merchant:  # noqa: B008
    """Register a merchant of the merchant alliance with its contract and POS terminals: 201
    when anything was new, 200 for the same request again. Its member discount applies to cards
    with the merchant-alliance application from now on; its terminals are registered (kind
    merchant, route = merchant_id) and attached to it for settlement. 409: registered with other
    terms, or a terminal registered as something else or attached to another counterparty."""
    new = NewMerchant(body.merchant_id, body.name, body.category, body.member_discount_percent, body.commission_bp)
    ctx = ctx_of(request)
    found, created = await merchants.register(_desk(request), op, new, body.terminal_ids, ctx.now_ms())
    response.status_code = 201 if created else 200
    return Merchant.model_validate(found)


@router.get("/merchants", response_model=list[MerchantBrief])
async def list_merchants(request: Request, after_id: Annotated[int, Query(ge=0, le=MAX_MERCHANT_ID)] = 0,
                         limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
                         op: Operator = Depends(require(Perm.READ))) -> list[MerchantBrief]:  # noqa: B008
    """Registered merchants by id, a page at a time (the next page: after_id = the last id)."""
    return [MerchantBrief.model_validate(r) for r in await merchants.listing(ctx_of(request).pool, after_id, limit)]


@router.get("/merchants/{merchant_id}", response_model=Merchant)
async def get_merchant(merchant_id: MerchantId, request: Request,
                       op: Operator = Depends(require(Perm.READ))) -> Merchant:  # noqa: B008
    ctx = ctx_of(request)
    return Merchant.model_validate(await merchants.get(ctx.pool, merchant_id, ctx.now_ms()))


@router.post("/merchants/{merchant_id}/terminals", response_model=Merchant, responses=_CREATED)
async def add_terminals(merchant_id: MerchantId, body: TerminalsIn, request: Request, response: Response,
                        op: Operator = Depends(require(Perm.MERCHANTS))) -> Merchant:  # noqa: B008
    """More POS terminals for the merchant, all or none: 201 when any was new, 200 if not."""
    found, created = await merchants.add_terminals(_desk(request), op, merchant_id, body.terminal_ids,
                                                   ctx_of(request).now_ms())
    response.status_code = 201 if created else 200
    return Merchant.model_validate(found)


@router.post("/merchants/{merchant_id}/discounts", response_model=Merchant, responses=_CREATED)
async def set_discount(merchant_id: MerchantId, body: DiscountIn, request: Request, response: Response,
                       op: Operator = Depends(require(Perm.MERCHANTS))) -> Merchant:  # noqa: B008
    """A new member discount from effective_from_ms on (not before now: 422): taps stamped
    before it keep the old one. 201 when set now, 200 for the same change again, 409 for
    another percent from the same time."""
    found, created = await merchants.set_discount(_desk(request), op, merchant_id, body.member_discount_percent,
                                                  body.effective_from_ms, ctx_of(request).now_ms())
    response.status_code = 201 if created else 200
    return Merchant.model_validate(found)


@router.get("/merchants/{merchant_id}/settlement/{window_id}", response_model=MerchantWindow)
async def merchant_window(merchant_id: MerchantId, window_id: WindowId, request: Request,
                          op: Operator = Depends(require(Perm.READ))) -> MerchantWindow:  # noqa: B008
    """The merchant's line of a settlement window (gross, commission, net as the window's close
    booked them) and the member discounts given at its terminals in the window."""
    return MerchantWindow.model_validate(await merchants.window_line(ctx_of(request).pool, merchant_id, window_id))
