"""Shapes and helpers shared by the routes."""

import uuid
from typing import Annotated, Any

from fastapi import Path, Request

from ...domain.cards import Category, card_no_valid
from ..context import ApiContext
from ..errors import ApiError

CATEGORY_BY_NAME = {c.name.lower(): int(c) for c in Category}
CATEGORY_NAMES = {v: k for k, v in CATEGORY_BY_NAME.items()}
CardNo = Annotated[int, Path(ge=1, le=10**18 - 1, description="card number (issuer prefix, serial, check digit)")]
IdempotencyKey = Annotated[str, "1 to 100 characters; a retry with the same key moves no money again"]


def ctx_of(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def check_card_no(card_no: int) -> None:
    if not card_no_valid(card_no):
        raise ApiError(422, "card_no: check digit does not match", field="card_no")


async def card_or_404(ctx: ApiContext, card_no: int) -> dict[str, Any]:
    check_card_no(card_no)
    view = await ctx.card_view(card_no)
    if view is None:
        raise ApiError(404, f"card {card_no} not found")
    return view


def op_key(scope: str, card_no: int, client_key: str | None = None) -> str:
    """An op's idempotency key: the client's (scoped to the card and the service), or a fresh
    one for ops that are idempotent by nature (setting a status or a product)."""
    return f"{scope}:{card_no}:{client_key if client_key is not None else uuid.uuid4().hex}"
