"""Money: top-ups and refunds through the card's shard (with an idempotency key), balance,
and paged transaction history from Postgres."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ...domain.ops import MAX_OP_FEN, OpKind, OpOutcome, Refund, TopUp
from ...domain.purses import PURSE_NAMES, Purse
from ...domain.results import Result
from ...domain.taps import TapKind
from ...persistence.migrate import journal_partition
from .. import audit
from ..auth import Operator, Perm, require
from ..context import ApiContext
from ..errors import raise_for_result
from .common import CardNo, IdempotencyKey, ReasonText, card_or_404, ctx_of, op_key

router = APIRouter(tags=["money"])
PurseName = Literal["epurse", "general"]
KIND_NAMES = {int(k): k.name.lower() for k in TapKind} | {int(k): k.name.lower() for k in OpKind}


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


async def movement(ctx: ApiContext, card_no: int, out: OpOutcome) -> Movement:
    raise_for_result(out.result, card_no)
    view = await card_or_404(ctx, card_no)
    return Movement(card_no=card_no, result=Result(out.result).name, replay=out.replay,
                    purses_fen={n: d for n, d in zip(PURSE_NAMES, out.deltas, strict=True) if d},
                    balance=view.purses)


@router.post("/cards/{card_no}/topups", response_model=Movement)
async def top_up(card_no: CardNo, body: MoneyIn, request: Request,
                 op: Operator = Depends(require(Perm.MONEY))) -> Movement:  # noqa: B008
    """Top up the e-purse (up to its cap) or the online account's general purse."""
    ctx = ctx_of(request)
    await card_or_404(ctx, card_no)
    cap = ctx.settings.api.epurse_max_fen if body.purse == "epurse" else 0
    out = await ctx.run_op(TopUp(op_key("topup", card_no, body.idempotency_key), card_no,
                                 int(Purse[body.purse.upper()]), body.amount_fen, cap))
    result = await movement(ctx, card_no, out)
    if not out.replay:
        await audit.record(ctx.pool, op, "money.top_up", f"card:{card_no}", None, result.model_dump())
    return result


@router.post("/cards/{card_no}/refunds", response_model=Movement)
async def refund(card_no: CardNo, body: RefundIn, request: Request,
                 op: Operator = Depends(require(Perm.MONEY))) -> Movement:  # noqa: B008
    """Pay money back to the holder out of a purse."""
    ctx = ctx_of(request)
    await card_or_404(ctx, card_no)
    out = await ctx.run_op(Refund(op_key("refund", card_no, body.idempotency_key), card_no,
                                  int(Purse[body.purse.upper()]), body.amount_fen))
    result = await movement(ctx, card_no, out)
    if not out.replay:
        await audit.record(ctx.pool, op, "money.refund", f"card:{card_no}", None, result.model_dump(), body.reason)
    return result


@router.get("/cards/{card_no}/balance", response_model=Balance)
async def balance(card_no: CardNo, request: Request,
                  op: Operator = Depends(require(Perm.READ))) -> Balance:  # noqa: B008
    return await balance_of(ctx_of(request), card_no)


async def balance_of(ctx: ApiContext, card_no: int) -> Balance:
    from .cards import STATUS_NAMES

    view = await card_or_404(ctx, card_no)
    return Balance(card_no=card_no, status=STATUS_NAMES.get(view.status, "blocked"),
                   purses=view.purses, total_fen=view.total_fen)


@router.get("/cards/{card_no}/transactions", response_model=Page)
async def transactions(card_no: CardNo, request: Request,
                       limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       before_lsn: Annotated[int | None, Query(ge=1, le=2**62)] = None,
                       op: Operator = Depends(require(Perm.READ))) -> Page:  # noqa: B008
    """Taps and card services on the card, newest first, from the journal in Postgres."""
    return await history(ctx_of(request), card_no, limit, before_lsn)


async def history(ctx: ApiContext, card_no: int, limit: int, before_lsn: int | None) -> Page:
    await card_or_404(ctx, card_no)
    table = journal_partition(ctx.shard_of(card_no))
    rows = await ctx.pool.fetch(
        f"SELECT lsn, kind, result, applied_ms, terminal_id, amount_fen, balance_after_fen, d_epurse, d_general,"
        f" d_voucher, d_allowance, d_medical, d_deposit FROM {table}"
        f" WHERE card_no = $1 AND lsn < $2 ORDER BY lsn DESC LIMIT $3",
        card_no, before_lsn or 2**62, limit)
    items = [Txn(lsn=r["lsn"], kind=KIND_NAMES.get(r["kind"], str(r["kind"])),
                 result=Result(r["result"]).name if r["result"] in Result._value2member_map_ else str(r["result"]),
                 at_ms=r["applied_ms"], terminal_id=r["terminal_id"], amount_fen=r["amount_fen"],
                 purses_fen={n: r[f"d_{n}"] for n in PURSE_NAMES if r[f"d_{n}"]},
                 balance_after_fen=r["balance_after_fen"]) for r in rows]
    return Page(card_no=card_no, items=items, next_before_lsn=items[-1].lsn if len(items) == limit else None)
