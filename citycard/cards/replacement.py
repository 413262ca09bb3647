"""Replace a card (the saga; api/routes/replace.py is its HTTP side): a new card for the same holder; every purse, pass and application moves to
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

from ..domain.cards import CardStatus
from ..domain.ops import CardOp, Moved, OpOutcome, TransferIn, TransferOut
from ..domain.purses import PURSE_NAMES
from ..domain.results import Result
from ..domain.views import CardView
from ..persistence import audit, card_rows, hotlist, replacements
from .errors import CardServiceError, Conflict, NotFound, Refused, check_result
from .services import CardInfo, Services, card_info
from .who import Who

# Refusals that clear by themselves: the holder returns the bike, exits the car park, or the
# new card is found again. Anything else remembered under a key stays refused.
_CLEARS = {
    "out": frozenset((Result.RENTAL_OPEN, Result.PARKING_SESSION_OPEN)),
    "in": frozenset((Result.CARD_BLOCKED, Result.CARD_UNKNOWN)),  # unknown: the shard had not loaded it
}
MAX_STEP_ATTEMPTS = 20  # keys per step; each needs a refusal that cleared in between

_moved_encoder = msgspec.msgpack.Encoder()
_moved_decoder = msgspec.msgpack.Decoder(Moved)


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


async def replace(svc: Services, who: Who, card_no: int, reason: str) -> CardInfo:
    """Replace a card with a new one for the same holder; safe to retry (a repeated request,
    even a concurrent one, resumes the same replacement and answers the same new card)."""
    before = await card_info(svc, card_no)  # Invalid for a bad check digit, NotFound
    rep = await find(svc.pool, card_no)
    if rep is None:
        _check_replaceable(before)
        rep = await start(svc, who, card_no, reason)
    await finish(svc, who, rep)
    return await card_info(svc, rep.new_card_no)


def _check_replaceable(card: CardInfo) -> None:
    """Refuse before anything is written (the shard checks rentals again at the move out)."""
    if card.view.status == CardStatus.CANCELLED:
        raise Conflict("the card is cancelled and was not replaced: nothing to move",
                       result=Result.CARD_CANCELLED.name)
    if card.holder_id is None:
        raise Conflict("the card has no cardholder: a replacement goes to the same holder")
    if card.view.rental_open:
        raise Refused(Result.RENTAL_OPEN)
    if card.view.parking_open:
        raise Refused(Result.PARKING_SESSION_OPEN)


async def find(conn: replacements.Conn, old_card_no: int) -> Replacement | None:
    row = await replacements.fetch(conn, old_card_no)
    if row is None:
        return None
    moved = None if row["moved"] is None else _moved_decoder.decode(row["moved"])
    return Replacement(old_card_no, row["new_card_no"], row["state"], moved)


async def start(svc: Services, who: Who, old_card_no: int, reason: str) -> Replacement:
    """Step 1: the new card and the replacements row, or the row a concurrent request made."""
    async with svc.pool.acquire() as conn, conn.transaction():
        # The old card's row lock makes concurrent replacements of one card take turns here.
        old = await replacements.lock_card(conn, old_card_no)
        if old is None:
            raise NotFound(f"card {old_card_no} not found")
        rep = await find(conn, old_card_no)
        if rep is not None:
            return rep
        if old["holder_id"] is None:
            raise Conflict("the card has no cardholder: a replacement goes to the same holder")
        # Moving out a card whose own money has not arrived yet would strand that money.
        pending = await replacements.receiving(conn, old_card_no)
        if pending is not None:
            raise Conflict(f"card {old_card_no} is still receiving the replacement of card {pending};"
                           f" retry that replacement first", replacing=pending)
        # apps, passes and money come with TransferIn
        new_card_no = await card_rows.insert_card(conn, svc.shards.n_shards, old["holder_id"], old["category"])
        await replacements.insert(conn, old_card_no, new_card_no, reason)
        await audit.record(conn, who.name, who.role, "card.issue", f"card:{new_card_no}", None,
                           {"holder_id": old["holder_id"], "replaces": old_card_no}, reason)
    await svc.shards.add_cards([new_card_no])
    return Replacement(old_card_no, new_card_no, "started", None)


async def finish(svc: Services, who: Who, rep: Replacement) -> Replacement:
    """Steps 2 to 4 from wherever ``rep`` stands."""
    if rep.state == "done":
        return rep
    old, new = rep.old_card_no, rep.new_card_no
    await svc.shards.add_cards([new])  # idempotent; an earlier attempt may have stopped before it did
    moved = rep.moved
    if rep.state == "started":
        moved = await move_out(svc, rep)
    assert moved is not None
    await retire(svc, old, new)
    after = await move_in(svc, rep, moved)
    async with svc.pool.acquire() as conn, conn.transaction():
        if await replacements.finish(conn, old, new):  # only the request that finished it writes the audit entry
            await audit.record(conn, who.name, who.role, "card.replace", f"card:{old}", moved_dict(old, moved),
                               {"new_card_no": new, "purses": after and after.purses})
    return Replacement(old, new, "done", None)


async def move_out(svc: Services, rep: Replacement) -> Moved:
    """Step 2: empty and cancel the old card; store what left it."""
    old, new = rep.old_card_no, rep.new_card_no

    async def cleared() -> bool:
        view = await svc.shards.card_view(old)
        return view is not None and not view.rental_open and not view.parking_open

    out = await _apply_step(svc, old, "out", lambda key: TransferOut(key, old, new), cleared)
    check_result(out.result, old)
    assert out.moved is not None
    await replacements.moved_out(svc.pool, old, _moved_encoder.encode(out.moved))
    return out.moved


async def retire(svc: Services, old_card_no: int, new_card_no: int) -> None:
    """Step 3: cancelled in the cards table and on the hotlist, for good."""
    async with svc.pool.acquire() as conn:
        await replacements.retire_card(conn, old_card_no)
        # Concurrent retries may both list it: a second listing is harmless (same set member).
        if not await card_rows.hotlisted(conn, old_card_no):
            await hotlist.add(conn, svc.redis, svc.redis_prefix, old_card_no, f"replaced by {new_card_no}")


async def move_in(svc: Services, rep: Replacement, moved: Moved) -> CardView | None:
    """Step 4: the new card receives what left the old one; its view after."""
    old, new = rep.old_card_no, rep.new_card_no

    async def cleared() -> bool:
        view = await svc.shards.card_view(new)
        return view is not None and view.status == CardStatus.ACTIVE

    out = await _apply_step(svc, old, "in", lambda key: TransferIn(key, new, old, moved), cleared)
    try:
        check_result(out.result, new)
    except CardServiceError as exc:  # say which card: the new one refused
        exc.args = (f"new card {new}: {exc}",)
        raise
    return out.view


async def _apply_step(svc: Services, old_card_no: int, step: str, make: Callable[[str], CardOp],
                      cleared: Callable[[], Awaitable[bool]]) -> OpOutcome:
    """The step's op under its first key whose outcome is not a refusal remembered from an
    earlier attempt that has cleared since (a key still refusing for a reason that holds is
    the answer: no key is spent on it). Concurrent requests walk the same keys, so the shard
    still applies the step once."""
    for attempt in range(MAX_STEP_ATTEMPTS):
        out = await svc.shards.apply_op(make(step_key(old_card_no, step, attempt)))
        if out.result == Result.OK or not out.replay or out.result not in _CLEARS[step]:
            return out
        if not await cleared():
            return out
    raise Conflict(f"replacement step {step} refused {MAX_STEP_ATTEMPTS} times; ask an operator",
                   result="TOO_MANY_ATTEMPTS")


def moved_dict(old_card_no: int, moved: Moved) -> dict[str, Any]:
    """What left the old card, for the audit log."""
    return {"card_no": old_card_no, "purses": dict(zip(PURSE_NAMES, moved.purses, strict=True)),
            **{f: getattr(moved, f) for f in moved.__struct_fields__ if f != "purses"}}
