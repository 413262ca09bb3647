"""A card's life: issued to a holder, reported lost and found, cancelled for good (every purse
paid back). The hotlist (Postgres, then Redis to every gateway) moves with the status."""

from dataclasses import asdict

import msgspec

from ..domain.cards import CardStatus
from ..domain.ops import Cancel, SetStatus
from ..domain.purses import PURSE_NAMES
from ..domain.results import Result
from ..persistence import audit, card_rows, hotlist
from .applications import Apps, check_insurance, fresh_key
from .errors import Conflict, NotFound, Refused, check_result
from .lookup import STATUS_NAMES
from .money import op_key
from .services import CardInfo, Services, card_info
from .who import Who


async def issue(svc: Services, who: Who, holder_id: int, apps: Apps, credit_good: bool) -> CardInfo:
    """A card for a holder who has no live card (a lost card is replaced instead)."""
    check_insurance(svc, apps)
    async with svc.pool.acquire() as conn, conn.transaction():
        category = await card_rows.lock_holder(conn, holder_id)
        if category is None:
            raise NotFound(f"holder {holder_id} not found")
        live = await card_rows.live_card_of(conn, holder_id)
        if live is not None:
            raise Conflict(f"holder {holder_id} already has live card {live}; replace it instead", card_no=live)
        card_no = await card_rows.insert_card(conn, svc.shards.n_shards, holder_id, category, apps.flags(),
                                              credit_good, apps.insurance if apps.medical else "",
                                              apps.medical_from_purse)
        await audit.record(conn, who.name, who.role, "card.issue", f"card:{card_no}", None,
                           {"holder_id": holder_id, "apps": asdict(apps), "credit_good": credit_good})
    await svc.shards.add_cards([card_no])
    return await card_info(svc, card_no)


async def set_lost(svc: Services, who: Who, card_no: int, reason: str, lost: bool) -> CardInfo:
    """Lost: on the hotlist first (every gateway refuses the card within a second), then blocked
    in its shard. Found: active in its shard first, so a card cancelled or replaced meanwhile
    stays listed, then off the hotlist."""
    before = await card_info(svc, card_no)
    status = STATUS_NAMES.get(before.view.status, "blocked")
    if before.view.status == CardStatus.CANCELLED:
        raise Refused(Result.CARD_CANCELLED)
    async with svc.pool.acquire() as conn:
        # the hotlist can be ahead of the shard (a card listed by an operator tool), so both count
        listed = await card_rows.hotlisted(conn, card_no)
        if status == ("blocked" if lost else "active") and listed == lost:
            return before  # already so: nothing to change, nothing to log
        if lost:
            await hotlist.add(conn, svc.redis, svc.redis_prefix, card_no, reason)
    new_status = CardStatus.BLOCKED if lost else CardStatus.ACTIVE
    out = await svc.shards.apply_op(SetStatus(fresh_key("status", card_no), card_no, int(new_status)))
    check_result(out.result, card_no)
    if not lost:
        async with svc.pool.acquire() as conn:
            await hotlist.remove(conn, svc.redis, svc.redis_prefix, card_no, reason)
    assert out.view is not None
    after = CardInfo(out.view, before.holder_id)
    await audit.record(svc.pool, who.name, who.role, "card.loss" if lost else "card.loss_cancel", f"card:{card_no}",
                       {"status": status}, {"status": STATUS_NAMES.get(after.view.status, "blocked")}, reason)
    return after


async def cancel(svc: Services, who: Who, card_no: int, key: str, reason: str) -> CardInfo:
    """Cancel for good: every purse is paid back to the holder (in the audit entry and the
    history), the card listed; once per idempotency key."""
    before = await card_info(svc, card_no)
    pending = await card_rows.open_replacement_of(svc.pool, card_no)
    if pending is not None:  # the money of a replacement could be stranded between the cards
        raise Conflict(f"a replacement of card {pending} is not finished: retry the replacement first",
                       result="REPLACEMENT_PENDING")
    op = Cancel(op_key("cancel", card_no, key), card_no)
    out = await svc.shards.apply_op(op)
    check_result(out.result, card_no)
    async with svc.pool.acquire() as conn:
        await card_rows.mark_cancelled(conn, card_no)
        # also on a retry: the first attempt may have stopped before listing the card
        if not await card_rows.hotlisted(conn, card_no):
            await hotlist.add(conn, svc.redis, svc.redis_prefix, card_no, f"cancelled: {reason}")
    assert out.view is not None
    after = CardInfo(out.view, before.holder_id)
    refunded = {name: -d for name, d in zip(PURSE_NAMES, out.deltas, strict=True) if d}
    await audit.record(svc.pool, who.name, who.role, "card.cancel", f"card:{card_no}",
                       msgspec.to_builtins(before.view), {**msgspec.to_builtins(after.view), "refunded_fen": refunded},
                       reason, op_key=op.key)  # once per key: a retry claims no second payout
    return after
