"""Replacing a card over HTTP; the saga (four idempotent steps, resumable by any retry) is
cards/replacement.py."""

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ...cards import replacement
from ..auth import Operator, Perm, require
from ..models import Card, card_model
from ..strict_route import StrictRoute
from .common import CardNo, ReasonText, ctx_of

router = APIRouter(tags=["cards"], route_class=StrictRoute)


class ReplaceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: ReasonText = Field(min_length=1, max_length=500, description="why: lost, damaged, worn out, ...")


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
    return card_model(await replacement.replace(ctx_of(request).services, op, card_no, body.reason))
