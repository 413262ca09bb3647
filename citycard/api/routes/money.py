"""Money over HTTP: top-ups and refunds (with an idempotency key), balance, and paged
transaction history; the card-services layer (cards/money.py) does the work."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from ...cards import money
from ..auth import Operator, Perm, require
from ..models import Balance, MoneyIn, Movement, Page, RefundIn, page_of
from ..strict_route import StrictRoute
from .common import CardNo, ctx_of

router = APIRouter(tags=["money"], route_class=StrictRoute)


@router.post("/cards/{card_no}/topups", response_model=Movement)
async def top_up(card_no: CardNo, body: MoneyIn, request: Request,
                 op: Operator = Depends(require(Perm.MONEY))) -> Movement:  # noqa: B008
    """Top up the e-purse (up to its cap) or the online account's general purse."""
    ctx = ctx_of(request)
    done = await money.top_up(ctx.shards, ctx.pool, op, card_no, body.purse, body.amount_fen,
                              body.idempotency_key, ctx.settings.api.epurse_max_fen)
    return Movement(**done.__dict__)


@router.post("/cards/{card_no}/refunds", response_model=Movement)
async def refund(card_no: CardNo, body: RefundIn, request: Request,
                 op: Operator = Depends(require(Perm.MONEY))) -> Movement:  # noqa: B008
    """Pay money back to the holder out of a purse."""
    ctx = ctx_of(request)
    done = await money.refund(ctx.shards, ctx.pool, op, card_no, body.purse, body.amount_fen,
                              body.idempotency_key, body.reason)
    return Movement(**done.__dict__)


@router.get("/cards/{card_no}/balance", response_model=Balance)
async def balance(card_no: CardNo, request: Request,
                  op: Operator = Depends(require(Perm.READ))) -> Balance:  # noqa: B008
    return Balance(**(await money.balance(ctx_of(request).shards, card_no)).__dict__)


@router.get("/cards/{card_no}/transactions", response_model=Page)
async def transactions(card_no: CardNo, request: Request,
                       limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       before_lsn: Annotated[int | None, Query(ge=1, le=2**62)] = None,
                       op: Operator = Depends(require(Perm.READ))) -> Page:  # noqa: B008
    """Taps and card services on the card, newest first, from the journal in Postgres."""
    ctx = ctx_of(request)
    return page_of(await money.transactions(ctx.shards, ctx.pool, card_no, limit, before_lsn))
