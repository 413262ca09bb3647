"""Self-service for the hotline and the website: a holder logs in with the card number and PIN
(HTTP Basic) to see the balance and history and to report the card lost.

Every request checks the PIN like /pin/verify: a wrong one counts towards the lockout, a
locked PIN is refused with 423, and a cancelled card cannot log in.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict
from starlette.requests import HTTPConnection

from ...cards import lifecycle, money, pins
from ...cards.errors import Refused
from ...cards.pin_kdf import pin_well_formed
from ...cards.who import Holder as HolderLogin
from ...domain.cards import card_no_valid
from ...domain.results import Result
from ..errors import ApiError
from ..models import Balance, Card, Page, card_model, page_of
from ..pin_models import HOLDER, Reason, Responses, error_response
from .common import ctx_of

router = APIRouter(prefix="/self", tags=["self-service"])
_CARD_NO_MAX_DIGITS = 18
DEFAULT_LOSS_REASON = "reported lost by the holder"


class _Basic(HTTPBasic):
    """HTTPBasic answering malformed credentials in the API's error shape."""

    async def __call__(self, request: HTTPConnection) -> HTTPBasicCredentials | None:  # type: ignore[override]
        try:
            return await super().__call__(request)
        except HTTPException:
            raise ApiError(401, "malformed Basic credentials") from None


_basic = _Basic(auto_error=False, scheme_name="holder_pin", realm="citycard self-service",
                description="username: the card number; password: the card's 6-digit PIN")


async def holder_card(request: Request,
                      cred: HTTPBasicCredentials | None = Depends(_basic)) -> int:  # noqa: B008
    """The card number of a holder whose PIN is right. Well-formed credentials count a try like
    /pin/verify; malformed ones (422) never reach the PIN."""
    if cred is None:
        raise ApiError(401, "log in with HTTP Basic: username = card number, password = PIN")
    user = cred.username
    digits = user.isascii() and user.isdigit() and len(user) <= _CARD_NO_MAX_DIGITS
    if not (digits and card_no_valid(int(user))):
        raise ApiError(422, "username: not a card number", field="username")
    if not pin_well_formed(cred.password):
        raise ApiError(422, "password: a PIN is 6 digits 0-9", field="password")
    card_no = int(user)
    try:
        await pins.check(ctx_of(request).services, card_no, cred.password, channel="self")
    except Refused as exc:
        if exc.result != Result.CARD_CANCELLED:
            raise
        raise ApiError(403, str(exc), result=exc.result.name) from None  # a cancelled card cannot log in
    return card_no


Holder = Annotated[int, Depends(holder_card)]
LOGIN: Responses = {**HOLDER, 403: error_response("the card is cancelled or replaced: it cannot log in"),
                    409: error_response("no PIN is set on the card")}


class LossIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason = DEFAULT_LOSS_REASON


@router.get("/balance", response_model=Balance, responses=LOGIN)
async def self_balance(card_no: Holder, request: Request) -> Balance:
    return Balance(**(await money.balance(ctx_of(request).shards, card_no)).__dict__)


@router.get("/transactions", response_model=Page, responses=LOGIN)
async def self_transactions(card_no: Holder, request: Request,
                            limit: Annotated[int, Query(ge=1, le=500)] = 50,
                            before_lsn: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> Page:
    """Taps and card services on the card, newest first; pass ``next_before_lsn`` for older ones."""
    ctx = ctx_of(request)
    return page_of(await money.transactions(ctx.shards, ctx.pool, card_no, limit, before_lsn))


@router.post("/loss", response_model=Card, responses=LOGIN)
async def self_loss(card_no: Holder, request: Request, body: LossIn | None = None) -> Card:
    """Report the card lost: refused at every gateway within a second. A found card is
    unblocked at a counter."""
    reason = body.reason if body is not None else DEFAULT_LOSS_REASON
    svc = ctx_of(request).services
    return card_model(await lifecycle.set_lost(svc, HolderLogin(card_no), card_no, reason, lost=True))
