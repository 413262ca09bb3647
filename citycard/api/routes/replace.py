"""Replace a card: a new card for the same holder; every purse, pass and application moves to
it exactly once, also under retries (concurrent ones too) and while taps on the old card are
in flight. The old card is cancelled and hotlisted for good.

Four steps, each idempotent; the ``replacements`` row records how far a replacement got, so
any retry resumes it:

1. start: the new card and the row (state ``started``), in one transaction that locks the old
   card's row, so concurrent requests share one new card;
2. move out: ``TransferOut`` on the old card's shard cancels and empties it. The shard is the
   card's one writer, so each tap in flight is decided wholly before (and moves with the
   money) or wholly after (refused, nothing charged). ``moved`` is stored (``moved_out``);
3. retire: the old card on the hotlist (gateways refuse it within a second) and cancelled in
   ``cards``. After the move out, not before: a hotlisted card with a bike still out could
   never return it, and the move out is refused while a rental or parking session is open;
4. move in: ``TransferIn`` on the new card's shard (``done``).

Ops are applied once per key and a replayed key answers the first outcome, ``moved``
included. A refusal is remembered under its key too, so a refusal that can clear (a bike
returned, a card found) moves the next attempt to a new key (``_apply_step``).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ...cards.services import card_info
from ...domain.cards import CardStatus
from ...domain.ops import CardOp, Moved, OpOutcome, TransferIn, TransferOut
from ...domain.purses import PURSE_NAMES
from ...domain.results import Result
from ...persistence import card_rows
from .. import audit
from ..auth import Operator, Perm, require
from ..context import ApiContext
from ..errors import ApiError, raise_for_result
from ..models import Card, card_model
from .common import CardNo, ReasonText, ctx_of

router = APIRouter(tags=["cards"])

# Refusals that clear by themselves: the holder returns the bike, exits the car park, or the
# new card is found again. Anything else remembered under a key stays refused.
_CLEARS = {
    "out": frozenset((Result.RENTAL_OPEN, Result.PARKING_SESSION_OPEN)),
    "in": frozenset((Result.CARD_BLOCKED, Result.CARD_UNKNOWN)),  # unknown: the shard had not loaded it
}
MAX_STEP_ATTEMPTS = 20  # keys per step; each needs a refusal that cleared in between

_moved_encoder = msgspec.msgpack.Encoder()
_moved_decoder = msgspec.msgpack.Decoder(Moved)


class ReplaceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: ReasonText = Field(min_length=1, max_length=500, description="why: lost, damaged, worn out, ...")


@dataclass(frozen=True)
class Replacement:
    old_card_no: int
    new_card_no: int
    state: str  # started | moved_out | done
    moved: Moved | None  # stored at moved_out, cleared at done


def step_key(old_card_no: int, step: str, attempt: int = 0) -> str:
    """The op key of a step ("out" or "in"); attempt > 0 only after a refusal that cleared."""
    base = f"replace:{old_card_no}:{step}"
    return base if attempt == 0 else f"{base}:{attempt}"


_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such card"},
    409: {"description": "cancelled and not replaced, no cardholder, a bike rental or parking session"
                         " open, or the card is itself still receiving a replacement"},
}


@router.post("/cards/{card_no}/replace", status_code=201, response_model=Card, responses=_RESPONSES)
async def replace_card(card_no: CardNo, body: ReplaceIn, request: Request,
                       op: Operator = Depends(require(Perm.CARDS))) -> Card:  # noqa: B008
    """Replace a card with a new one for the same holder. Balances of every purse, passes and
    applications move to the new card exactly once; the old card is cancelled and hotlisted
    for good. Safe to retry: a repeated request (even a concurrent one) resumes the same
    replacement and answers the same new card."""
    ctx = ctx_of(request)
    before = card_model(await card_info(ctx_of(request).services, card_no))  # 422 bad check digit, 404 unknown
    rep = await find(ctx.pool, card_no)
    if rep is None:
        _check_replaceable(before)
        rep = await start(ctx, op, card_no, body.reason)
    await finish(ctx, op, rep)
    return card_model(await card_info(ctx_of(request).services, rep.new_card_no))


def _check_replaceable(card: Card) -> None:
    """Refuse before anything is written (the shard checks rentals again at the move out)."""
    if card.status == "cancelled":
        raise ApiError(409, "the card is cancelled and was not replaced: nothing to move",
                       result=Result.CARD_CANCELLED.name)
    if card.holder_id is None:
        raise ApiError(409, "the card has no cardholder: a replacement goes to the same holder")
    if card.bike_rental_open:
        raise_for_result(Result.RENTAL_OPEN, card.card_no)
    if card.parking_open:
        raise_for_result(Result.PARKING_SESSION_OPEN, card.card_no)


async def find(conn: Any, old_card_no: int) -> Replacement | None:
    row = await conn.fetchrow(
        "SELECT new_card_no, state, moved FROM replacements WHERE old_card_no = $1", old_card_no)
    if row is None:
        return None
    moved = None if row["moved"] is None else _moved_decoder.decode(row["moved"])
    return Replacement(old_card_no, row["new_card_no"], row["state"], moved)


async def start(ctx: ApiContext, op: Operator, old_card_no: int, reason: str) -> Replacement:
    """Step 1: the new card and the replacements row, or the row a concurrent request made."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        # The old card's row lock makes concurrent replacements of one card take turns here.
        old = await conn.fetchrow("SELECT holder_id, category FROM cards WHERE card_no = $1 FOR UPDATE",
                                  old_card_no)
        if old is None:
            raise ApiError(404, f"card {old_card_no} not found")
        rep = await find(conn, old_card_no)
        if rep is not None:
            return rep
        if old["holder_id"] is None:
            raise ApiError(409, "the card has no cardholder: a replacement goes to the same holder")
        # Moving out a card whose own money has not arrived yet would strand that money.
        pending = await conn.fetchval(
            "SELECT old_card_no FROM replacements WHERE new_card_no = $1 AND state <> 'done'", old_card_no)
        if pending is not None:
            raise ApiError(409, f"card {old_card_no} is still receiving the replacement of card {pending};"
                                f" retry that replacement first", replacing=pending)
        # apps, passes and money come with TransferIn
        new_card_no = await card_rows.insert_card(conn, ctx.shards.n_shards, old["holder_id"], old["category"])
        await conn.execute(
            "INSERT INTO replacements (old_card_no, new_card_no, state, reason) VALUES ($1, $2, 'started', $3)",
            old_card_no, new_card_no, reason)
        await audit.record(conn, op, "card.issue", f"card:{new_card_no}", None,
                           {"holder_id": old["holder_id"], "replaces": old_card_no}, reason)
    await ctx.add_cards([new_card_no])
    return Replacement(old_card_no, new_card_no, "started", None)


async def finish(ctx: ApiContext, op: Operator, rep: Replacement) -> Replacement:
    """Steps 2 to 4 from wherever ``rep`` stands."""
    if rep.state == "done":
        return rep
    old, new = rep.old_card_no, rep.new_card_no
    await ctx.add_cards([new])  # idempotent; an earlier attempt may have stopped before it did
    moved = rep.moved
    if rep.state == "started":
        moved = await move_out(ctx, rep)
    assert moved is not None
    await retire(ctx, old, new)
    await move_in(ctx, rep, moved)
    after = await ctx.card_view(new)
    async with ctx.pool.acquire() as conn, conn.transaction():
        flipped = await conn.fetchval(
            "UPDATE replacements SET state = 'done', moved = NULL, done_at = now()"
            " WHERE old_card_no = $1 AND state <> 'done' RETURNING 1", old)
        if flipped:  # only the request that finished it writes the audit entry
            # the holder's PIN goes with the card (the hash is not tied to the card number)
            await conn.execute(
                "INSERT INTO card_pins (card_no, pin_hash, salt, kdf, failed_tries)"
                " SELECT $2, pin_hash, salt, kdf, failed_tries FROM card_pins WHERE card_no = $1"
                " ON CONFLICT (card_no) DO NOTHING", old, new)
            await audit.record(conn, op, "card.replace", f"card:{old}", moved_dict(old, moved),
                               {"new_card_no": new, "purses": after and after.purses})
    return Replacement(old, new, "done", None)


async def move_out(ctx: ApiContext, rep: Replacement) -> Moved:
    """Step 2: empty and cancel the old card; store what left it."""
    old, new = rep.old_card_no, rep.new_card_no

    async def cleared() -> bool:
        view = await ctx.card_view(old)
        return view is not None and not view.rental_open and not view.parking_open

    out = await _apply_step(ctx, old, "out", lambda key: TransferOut(key, old, new), cleared)
    raise_for_result(out.result, old)
    assert out.moved is not None
    await ctx.pool.execute(
        "UPDATE replacements SET state = 'moved_out', moved = $2 WHERE old_card_no = $1 AND state = 'started'",
        old, _moved_encoder.encode(out.moved))
    return out.moved


async def retire(ctx: ApiContext, old_card_no: int, new_card_no: int) -> None:
    """Step 3: cancelled in the cards table and on the hotlist, for good."""
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE cards SET status = $2 WHERE card_no = $1 AND status <> $2",
                           old_card_no, int(CardStatus.CANCELLED))
        # Concurrent retries may both list it: a second listing is harmless (same set member).
        if not await conn.fetchval("SELECT 1 FROM hotlist WHERE card_no = $1", old_card_no):
            await ctx.hotlist_add(conn, old_card_no, f"replaced by {new_card_no}")


async def move_in(ctx: ApiContext, rep: Replacement, moved: Moved) -> None:
    """Step 4: the new card receives what left the old one."""
    old, new = rep.old_card_no, rep.new_card_no

    async def cleared() -> bool:
        view = await ctx.card_view(new)
        return view is not None and view.status == CardStatus.ACTIVE

    out = await _apply_step(ctx, old, "in", lambda key: TransferIn(key, new, old, moved), cleared)
    try:
        raise_for_result(out.result, new)
    except ApiError as exc:  # say which card: the new one refused
        raise ApiError(exc.status, f"new card {new}: {exc.reason}", **exc.extra) from None


async def _apply_step(ctx: ApiContext, old_card_no: int, step: str, make: Any,
                      cleared: Callable[[], Awaitable[bool]]) -> OpOutcome:
    """The step's op under its first key whose outcome is not a refusal remembered from an
    earlier attempt that has cleared since (a key still refusing for a reason that holds is
    the answer: no key is spent on it). Concurrent requests walk the same keys, so the shard
    still applies the step once."""
    for attempt in range(MAX_STEP_ATTEMPTS):
        op: CardOp = make(step_key(old_card_no, step, attempt))
        out = await ctx.run_op(op)
        if out.result == Result.OK or not out.replay or out.result not in _CLEARS[step]:
            return out
        if not await cleared():
            return out
    raise ApiError(409, f"replacement step {step} refused {MAX_STEP_ATTEMPTS} times; ask an operator",
                   result="TOO_MANY_ATTEMPTS")


def moved_dict(old_card_no: int, moved: Moved) -> dict[str, Any]:
    """What left the old card, for the audit log."""
    return {"card_no": old_card_no, "purses": dict(zip(PURSE_NAMES, moved.purses, strict=True)),
            **{f: getattr(moved, f) for f in moved.__struct_fields__ if f != "purses"}}
