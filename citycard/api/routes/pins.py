"""PINs: set and reset at a counter, verified by a payment channel (and changed by the holder
in self-service: selfservice.py), with a lockout.

A check first reserves a try with one atomic UPDATE (while the failures and the checks in
progress are below the limit) and only then runs the KDF, so however many guesses arrive at
once, at most ``pin_max_tries`` of them are ever evaluated. A wrong PIN turns its reservation
into a failure; a right one forgives the failures before it. The PIN itself is never logged,
audited or echoed.
"""


from fastapi import APIRouter, Depends, Request

from ...cards import pins
from ...cards.throttle import Scope
from ..auth import Operator, Perm, require
from ..pin_models import (
    BUSY,
    COUNTER,
    VERIFY,
    PinIn,
    PinState,
    ResetIn,
    Verified,
    error_response,
)
from ..strict_route import StrictRoute
from .common import CardNo, ctx_of

OPERATOR = None  # an operator's PIN work shares the whole KDF gate, not a source's part of it

router = APIRouter(tags=["pins"], route_class=StrictRoute)

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
    return _answer(await pins.set_first(ctx_of(request).services, op, card_no, body.pin, OPERATOR))


@router.post("/cards/{card_no}/pin/reset", response_model=PinState,
             responses={**COUNTER, 503: BUSY, 409: error_response("no PIN is set, or the card is cancelled")})
async def reset_pin(card_no: CardNo, body: ResetIn, request: Request,
                    op: Operator = Depends(require(Perm.CARDS))) -> PinState:  # noqa: B008
    """A clerk who has identified the holder replaces the PIN; this also lifts a lockout."""
    return _answer(await pins.reset(ctx_of(request).services, op, card_no, body.new_pin, body.reason, OPERATOR))


@router.post("/cards/{card_no}/pin/verify", response_model=Verified, responses=VERIFY)
async def verify_pin(card_no: CardNo, body: PinIn, request: Request,
                     op: Operator = Depends(require(Perm.VERIFY_PIN))) -> Verified:  # noqa: B008
    """An online-payment channel (role `payment`) or a clerk checks the PIN the holder typed:
    ``{"ok": true}``, or 401 with the tries left. After ``pin_max_tries`` wrong PINs in a row
    every answer is 423 until a counter reset. A lost card's PIN is refused (409
    CARD_BLOCKED): it pays for nothing. Wrong PINs per token are limited (429)."""
    svc = ctx_of(request).services
    await svc.throttle.check(Scope.PIN_TOKEN, op.token_id)
    try:
        await pins.check(svc, card_no, body.pin, channel=pins.VERIFY, source=OPERATOR)
    except pins.WrongPin:
        await svc.throttle.failed(Scope.PIN_TOKEN, op.token_id)
        raise
    return Verified()
