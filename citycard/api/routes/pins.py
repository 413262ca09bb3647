"""PINs: set and reset at a counter, change and verify on the holder's channels, with a lockout.

A check first reserves a try with one atomic UPDATE (``failed_tries + 1`` while below the
limit) and only then runs the KDF, so however many guesses arrive at once, at most
``pin_max_tries`` of them are ever evaluated. A right PIN gives back its reservation and the
wrong tries before it; a wrong one keeps it. The PIN itself is never logged, audited or echoed.
"""


from fastapi import APIRouter, Depends, Request

from ...cards import pins
from ..auth import Operator, Perm, require
from ..errors import ApiError
from ..pin_models import (
    BUSY,
    COUNTER,
    HOLDER,
    ChangeIn,
    PinIn,
    PinState,
    ResetIn,
    Verified,
    error_response,
)
from .common import CardNo, ctx_of

router = APIRouter(tags=["pins"])

def _answer(st: pins.PinState) -> PinState:
    return PinState(**st.__dict__)


@router.get("/cards/{card_no}/pin", response_model=PinState, responses=COUNTER)
async def pin_state(card_no: CardNo, request: Request,
                    op: Operator = Depends(require(Perm.READ))) -> PinState:  # noqa: B008
    """Whether a PIN is set and whether it is locked (never the PIN or its hash)."""
    return _answer(await pins.state(ctx_of(request).services, card_no))


@router.put("/cards/{card_no}/pin", status_code=201, response_model=PinState,
            responses={**COUNTER, 503: BUSY,
                       409: error_response("a PIN is already set, or the card is cancelled")})
async def set_pin(card_no: CardNo, body: PinIn, request: Request,
                  op: Operator = Depends(require(Perm.CARDS))) -> PinState:  # noqa: B008
    """Set a card's first PIN at a counter. An existing PIN is reset or changed instead."""
    return _answer(await pins.set_first(ctx_of(request).services, op, card_no, body.pin))


@router.post("/cards/{card_no}/pin/reset", response_model=PinState,
             responses={**COUNTER, 503: BUSY, 409: error_response("no PIN is set, or the card is cancelled")})
async def reset_pin(card_no: CardNo, body: ResetIn, request: Request,
                    op: Operator = Depends(require(Perm.CARDS))) -> PinState:  # noqa: B008
    """A clerk who has identified the holder replaces the PIN; this also lifts a lockout."""
    return _answer(await pins.reset(ctx_of(request).services, op, card_no, body.new_pin, body.reason))


@router.post("/cards/{card_no}/pin/change", response_model=Verified,
             responses={**HOLDER, 409: error_response(
                 "no PIN is set, the card is cancelled, or the PIN was changed meanwhile")})
async def change_pin(card_no: CardNo, body: ChangeIn, request: Request) -> Verified:
    """The holder changes the PIN with the old one (no operator token). A wrong old PIN counts
    as a failed try."""
    if body.new_pin == body.old_pin:
        raise ApiError(422, "new_pin: must differ from old_pin", field="new_pin")
    await pins.change(ctx_of(request).services, card_no, body.old_pin, body.new_pin)
    return Verified()


@router.post("/cards/{card_no}/pin/verify", response_model=Verified,
             responses={**HOLDER, 409: error_response("no PIN is set, or the card is cancelled")})
async def verify_pin(card_no: CardNo, body: PinIn, request: Request) -> Verified:
    """Check a PIN for an online payment: ``{"ok": true}``, or 401 with the tries left. After
    ``pin_max_tries`` wrong PINs in a row every answer is 423 until a counter reset. Only the
    PIN is checked: a payment on a card reported lost is refused by the card's shard."""
    await pins.check(ctx_of(request).services, card_no, body.pin, channel="pin/verify")
    return Verified()
