"""Cards: issue, status and balances, applications, products, loss reports, cancellation."""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ...domain.cards import DEFAULT_APPS, App, CardStatus, make_card_no
from ...domain.ops import Cancel, SetApps, SetProduct, SetStatus
from ...domain.purses import PURSE_NAMES
from ...domain.shard import shard_of
from ...domain.views import CardView
from .. import audit
from ..auth import Operator, Perm, require
from ..errors import ApiError, raise_for_result
from .common import (
    CATEGORY_BY_NAME,
    CATEGORY_NAMES,
    CardNo,
    IdempotencyKey,
    ReasonText,
    Text,
    card_or_404,
    ctx_of,
    op_key,
)
from .holders import HolderId, load_holder

router = APIRouter(tags=["cards"])
STATUS_NAMES = {int(s): s.name.lower() for s in CardStatus}
Product = Annotated[Literal["monthly_pass", "park_pass"], Path(description="monthly bus pass or park annual pass")]


class Apps(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epurse: bool = True
    online: bool = True
    library: bool = False
    medical: bool = False
    insurance: Text = Field("", max_length=40, description="insurance category; required with medical")
    medical_from_purse: bool = Field(False, description="self-pay may come from the ordinary purses")
    merchant_member: bool = False


class IssueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    apps: Apps = Apps()
    credit_good: bool = True


class Validity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    valid_from: AwareDatetime
    valid_until: AwareDatetime


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: ReasonText = Field(min_length=1, max_length=500)


class CancelIn(Reason):
    idempotency_key: IdempotencyKey


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


def _apps_flags(a: Apps) -> int:
    flags = 0
    for name, flag in (("epurse", App.EPURSE), ("online", App.ONLINE), ("library", App.LIBRARY),
                       ("medical", App.MEDICAL), ("merchant_member", App.MERCHANT_MEMBER)):
        if getattr(a, name):
            flags |= flag
    return flags


def _validity(window: Any) -> Validity | None:
    if window is None:
        return None
    return Validity(valid_from=datetime.fromtimestamp(window[0] / 1000).astimezone(),
                    valid_until=datetime.fromtimestamp(window[1] / 1000).astimezone())


def card_model(view: CardView, holder_id: int | None) -> Card:
    flags = view.apps
    apps = Apps(epurse=bool(flags & App.EPURSE), online=bool(flags & App.ONLINE),
                library=bool(flags & App.LIBRARY), medical=bool(flags & App.MEDICAL),
                insurance=view.insurance, medical_from_purse=view.medical_from_purse,
                merchant_member=bool(flags & App.MERCHANT_MEMBER))
    return Card(card_no=view.card_no, holder_id=holder_id, status=STATUS_NAMES.get(view.status, "blocked"),
                category=CATEGORY_NAMES.get(view.category, "adult"), apps=apps, credit_good=view.credit_good,
                purses=view.purses, total_fen=view.total_fen, monthly_pass=_validity(view.monthly_pass),
                park_pass=_validity(view.park_pass), voucher_until_ms=view.voucher_until_ms,
                voucher_categories=list(view.voucher_categories), allowance_until_ms=view.allowance_until_ms,
                bike_rental_open=view.rental_open, parking_open=view.parking_open)


async def load_card(request: Request, card_no: int) -> Card:
    ctx = ctx_of(request)
    view = await card_or_404(ctx, card_no)
    holder_id = await ctx.pool.fetchval("SELECT holder_id FROM cards WHERE card_no = $1", card_no)
    return card_model(view, holder_id)


def _check_insurance(request: Request, apps: Apps) -> None:
    if apps.medical and not apps.insurance:
        raise ApiError(422, "apps.insurance: required when medical is enabled", field="apps.insurance")
    known = request.app.state.insurance_categories
    if apps.insurance and apps.insurance not in known:
        raise ApiError(422, f"apps.insurance: not one of {sorted(known)}", field="apps.insurance")


@router.post("/holders/{holder_id}/cards", status_code=201, response_model=Card)
async def issue(holder_id: HolderId, body: IssueIn, request: Request,
                op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Issue a card to a holder who has no live card (a lost card is replaced instead)."""
    ctx = ctx_of(request)
    _check_insurance(request, body.apps)
    apps = _apps_flags(body.apps)
    async with ctx.pool.acquire() as conn, conn.transaction():
        holder = await load_holder(conn, holder_id)
        await conn.execute("SELECT 1 FROM holders WHERE holder_id = $1 FOR UPDATE", holder_id)
        live = await conn.fetchval("SELECT card_no FROM cards WHERE holder_id = $1 AND status <> $2 LIMIT 1",
                                   holder_id, int(CardStatus.CANCELLED))
        if live is not None:
            raise ApiError(409, f"holder {holder_id} already has live card {live}; replace it instead",
                           card_no=live)
        card_no = await insert_card(conn, ctx.shards.n_shards, holder_id, CATEGORY_BY_NAME[holder.category], apps,
                                    body.credit_good, body.apps.insurance if body.apps.medical else "",
                                    body.apps.medical_from_purse)
        await audit.record(conn, op, "card.issue", f"card:{card_no}", None,
                           {"holder_id": holder_id, **body.model_dump()})
    await ctx.add_cards([card_no])
    return await load_card(request, card_no)


async def insert_card(conn: Any, n_shards: int, holder_id: int, category: int, apps: int = int(DEFAULT_APPS),
                      credit_good: bool = True, insurance: str = "", medical_from_purse: bool = False) -> int:
    """A new active card row for a holder, numbered from the card serial; returns its number.
    The caller tells the shard (``ctx.add_cards``) once the row is committed."""
    card_no = make_card_no(await conn.fetchval("SELECT nextval('card_serial')"))
    await conn.execute(
        "INSERT INTO cards (card_no, shard_id, category, status, holder_id, apps, credit_good, insurance,"
        " medical_from_purse) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        card_no, shard_of(card_no, n_shards), category, int(CardStatus.ACTIVE), holder_id, apps, credit_good,
        insurance, medical_from_purse)
    return card_no


@router.get("/cards/{card_no}", response_model=Card)
async def get_card(card_no: CardNo, request: Request,
                   op: Operator = Depends(require(Perm.READ))) -> Card:  # noqa: B008
    """Status, balances of every purse, applications and products, as the card's shard holds them."""
    return await load_card(request, card_no)


@router.put("/cards/{card_no}/apps", response_model=Card)
async def set_apps(card_no: CardNo, body: Apps, request: Request,
                   op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Enable or disable applications: e-purse, online account, health insurance, library, merchant alliance."""
    ctx = ctx_of(request)
    _check_insurance(request, body)
    before = await load_card(request, card_no)
    out = await ctx.run_op(SetApps(op_key("apps", card_no), card_no, _apps_flags(body),
                                   body.insurance if body.medical else "", body.medical_from_purse))
    raise_for_result(out.result, card_no)
    after = await load_card(request, card_no)
    await audit.record(ctx.pool, op, "card.apps", f"card:{card_no}", before.apps.model_dump(),
                       after.apps.model_dump())
    return after


@router.put("/cards/{card_no}/products/{product}", response_model=Card)
async def set_product(card_no: CardNo, product: Product, body: Validity, request: Request,
                      op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Buy or renew a monthly bus pass or a park annual pass: its validity [from, until)."""
    from_ms, until_ms = int(body.valid_from.timestamp() * 1000), int(body.valid_until.timestamp() * 1000)
    if until_ms <= from_ms:
        raise ApiError(422, "valid_until: must be after valid_from", field="valid_until")
    if from_ms < 0:
        raise ApiError(422, "valid_from: before 1970", field="valid_from")
    return await _product(request, op, card_no, product, from_ms, until_ms)


@router.delete("/cards/{card_no}/products/{product}", response_model=Card)
async def remove_product(card_no: CardNo, product: Product, request: Request,
                         op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    return await _product(request, op, card_no, product, 0, 0)


async def _product(request: Request, op: Operator, card_no: int, product: str, from_ms: int, until_ms: int) -> Card:
    ctx = ctx_of(request)
    before = await load_card(request, card_no)
    out = await ctx.run_op(SetProduct(op_key(product, card_no), card_no, product, from_ms, until_ms))
    raise_for_result(out.result, card_no)
    after = await load_card(request, card_no)
    await audit.record(ctx.pool, op, f"card.{product}", f"card:{card_no}",
                       getattr(before, product), getattr(after, product))
    return after


@router.post("/cards/{card_no}/loss", response_model=Card)
async def report_loss(card_no: CardNo, body: Reason, request: Request,
                      op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Report a card lost: on the hotlist at every gateway within a second, then blocked in its shard."""
    return await set_lost(request, op, card_no, body.reason, lost=True)


@router.post("/cards/{card_no}/loss/cancel", response_model=Card)
async def cancel_loss(card_no: CardNo, body: Reason, request: Request,
                      op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """The card was found: off the hotlist and active again (a cancelled card stays cancelled)."""
    return await set_lost(request, op, card_no, body.reason, lost=False)


async def set_lost(request: Request, who: Operator | str, card_no: int, reason: str, lost: bool) -> Card:
    ctx = ctx_of(request)
    before = await load_card(request, card_no)
    if before.status == "cancelled":
        raise ApiError(409, "the card is cancelled or replaced", result="CARD_CANCELLED")
    async with ctx.pool.acquire() as conn:
        # the hotlist can be ahead of the shard (a card listed by an operator tool), so both count
        listed = await conn.fetchval("SELECT true FROM hotlist WHERE card_no = $1", card_no) or False
        if before.status == ("blocked" if lost else "active") and listed == lost:
            return before  # already so: nothing to change, nothing to log
        # A loss: the hotlist first, it stops taps at the gateways within a second. Found
        # again: the shard first, so a card cancelled or replaced meanwhile stays listed.
        if lost:
            await ctx.hotlist_add(conn, card_no, reason)
    status = CardStatus.BLOCKED if lost else CardStatus.ACTIVE
    out = await ctx.run_op(SetStatus(op_key("status", card_no), card_no, int(status)))
    raise_for_result(out.result, card_no)
    if not lost:
        async with ctx.pool.acquire() as conn:
            await ctx.hotlist_remove(conn, card_no, reason)
    after = await load_card(request, card_no)
    await audit.record(ctx.pool, who, "card.loss" if lost else "card.loss_cancel", f"card:{card_no}",
                       {"status": before.status}, {"status": after.status}, reason)
    return after


@router.post("/cards/{card_no}/cancel", response_model=Card)
async def cancel_card(card_no: CardNo, body: CancelIn, request: Request,
                      op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Cancel a card for good; every purse is refunded to the holder (the response shows the
    card emptied; the refunded amounts are in the audit log and the history)."""
    ctx = ctx_of(request)
    before = await load_card(request, card_no)
    pending = await ctx.pool.fetchval(
        "SELECT old_card_no FROM replacements WHERE (new_card_no = $1 OR old_card_no = $1) AND state <> 'done'",
        card_no)
    if pending is not None:  # the money of a replacement could be stranded between the cards
        raise ApiError(409, f"a replacement of card {pending} is not finished: retry the replacement first",
                       result="REPLACEMENT_PENDING")
    out = await ctx.run_op(Cancel(op_key("cancel", card_no, body.idempotency_key), card_no))
    raise_for_result(out.result, card_no)
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE cards SET status = $2 WHERE card_no = $1", card_no, int(CardStatus.CANCELLED))
        # also on a retry: the first attempt may have stopped before listing the card
        if not await conn.fetchval("SELECT true FROM hotlist WHERE card_no = $1", card_no):
            await ctx.hotlist_add(conn, card_no, f"cancelled: {body.reason}")
    after = await load_card(request, card_no)
    refunded = {name: -d for name, d in zip(PURSE_NAMES, out.deltas, strict=True) if d}
    await audit.record(ctx.pool, op, "card.cancel", f"card:{card_no}", before.model_dump(mode="json"),
                       {**after.model_dump(mode="json"), "refunded_fen": refunded}, body.reason)
    return after
