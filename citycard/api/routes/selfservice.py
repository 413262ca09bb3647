"""Self-service for the hotline and the website. A holder logs in with the card number, the
holder's identity number and the PIN (``POST /self/session``) and gets a session token that
stands for the card for ``api.self_session_ttl_s``; the other /self endpoints take that token
(``Authorization: Bearer ss_...``) and check no PIN. How a stranger is kept out:
cards/self_login.py; the limits: docs/api.md.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from ...cards import lifecycle, money, pins, self_login, self_sessions
from ...cards.errors import NotAuthenticated, Refused
from ...cards.lookup import check_card_no
from ...cards.who import Holder as HolderLogin
from ..errors import ApiError
from ..models import Balance, Card, Page, card_model, page_of
from ..pin_models import (
    BAD_INPUT,
    BUSY,
    LIMITED,
    LOCKED,
    SESSION,
    WRONG,
    ChangeIn,
    LoginIn,
    Reason,
    Responses,
    SessionOut,
    Verified,
    error_response,
)
from ..source import source_of
from ..strict_route import StrictRoute
from .common import ctx_of

router = APIRouter(prefix="/self", tags=["self-service"], route_class=StrictRoute)
DEFAULT_LOSS_REASON = "reported lost by the holder"
SESSION_SCHEME = "holder_session"
_session = HTTPBearer(auto_error=False, scheme_name=SESSION_SCHEME,
                      description="a self-service session: `Authorization: Bearer ss_...` from POST /self/session")


def client_source(request: Request) -> str:
    return source_of(request, ctx_of(request).settings.api.trusted_proxies)


async def _cancelled_is_403(coro):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    try:
        return await coro
    except Refused as exc:
        raise ApiError(403, str(exc), result=exc.result.name) from None  # the holder knows it is theirs


async def holder_card(request: Request,
                      cred: HTTPAuthorizationCredentials | None = Depends(_session)) -> int:  # noqa: B008
    """The card of the session named by the bearer token."""
    if cred is None or cred.scheme.lower() != "bearer":
        raise NotAuthenticated("log in at POST /self/session and send the session token as a bearer token")
    card_no: int = await _cancelled_is_403(self_login.holder_card(ctx_of(request).services, cred.credentials))
    return card_no


Holder = Annotated[int, Depends(holder_card)]
LOGIN: Responses = {401: error_response(f"{self_login.WRONG}; `tries_left` only once the identity matched"),
                    403: error_response("the card is cancelled or replaced: log in with the new card"),
                    409: error_response("no PIN is set on the card: a counter sets the first one"),
                    422: BAD_INPUT, 423: LOCKED, 429: LIMITED, 503: BUSY}


class LossIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason = DEFAULT_LOSS_REASON


@router.post("/session", status_code=201, response_model=SessionOut, responses=LOGIN)
async def log_in(body: LoginIn, request: Request) -> SessionOut:
    """Log in: card number, identity number and PIN. A wrong PIN counts towards the lockout
    only when the identity number is the holder's."""
    check_card_no(body.card_no)
    ctx = ctx_of(request)
    session = await _cancelled_is_403(
        self_login.login(ctx.services, body.card_no, body.citizen_id, body.pin, client_source(request)))
    if ctx.metrics is not None:
        ctx.metrics.self_logins.inc()
    return SessionOut(session_token=session.token, card_no=session.card_no, expires_in_s=session.expires_in_s)


@router.delete("/session", status_code=204, responses=SESSION)
async def log_out(card_no: Holder, request: Request,
                  cred: HTTPAuthorizationCredentials = Depends(_session)) -> None:  # noqa: B008
    await self_sessions.end(ctx_of(request).services, cred.credentials)


@router.get("/balance", response_model=Balance, responses=SESSION)
async def self_balance(card_no: Holder, request: Request) -> Balance:
    return Balance(**(await money.balance(ctx_of(request).shards, card_no)).__dict__)


@router.get("/transactions", response_model=Page, responses=SESSION)
async def self_transactions(card_no: Holder, request: Request,
                            limit: Annotated[int, Query(ge=1, le=500)] = 50,
                            before_lsn: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> Page:
    """Taps and card services on the card, newest first; pass ``next_before_lsn`` for older ones."""
    ctx = ctx_of(request)
    return page_of(await money.transactions(ctx.shards, ctx.pool, card_no, limit, before_lsn))


@router.post("/loss", response_model=Card, responses=SESSION)
async def self_loss(card_no: Holder, request: Request, body: LossIn | None = None) -> Card:
    """Report the card lost: refused at every gateway within a second. A found card is
    unblocked at a counter."""
    reason = body.reason if body is not None else DEFAULT_LOSS_REASON
    svc = ctx_of(request).services
    return card_model(await lifecycle.set_lost(svc, HolderLogin(card_no), card_no, reason, lost=True))


@router.post("/pin/change", response_model=Verified,
             responses={**SESSION, 401: WRONG, 409: error_response("the PIN was changed or reset meanwhile"),
                        423: LOCKED, 429: LIMITED, 503: BUSY})
async def change_pin(card_no: Holder, body: ChangeIn, request: Request) -> Verified:
    """Change the PIN with the old one; a wrong old PIN counts as a failed try. Easy PINs
    (repeated or consecutive digits, the holder's birthday or identity number) are refused."""
    await pins.change(ctx_of(request).services, card_no, body.old_pin, body.new_pin, client_source(request))
    return Verified()
