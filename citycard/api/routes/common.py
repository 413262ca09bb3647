"""Shapes and helpers shared by the routes."""

import uuid
from typing import Annotated

from fastapi import Path, Request
from pydantic import AfterValidator, Field

from ...cards import lookup
from ...domain.views import CardView
from ..context import ApiContext

CardNo = Annotated[int, Path(ge=1, le=10**18 - 1, description="card number (issuer prefix, serial, check digit)")]
HolderId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _plain_text(v: str) -> str:
    """Text that Postgres (UTF-8, no NUL) and the journal can keep: a NUL or a lone surrogate
    is bad input (422), not a server error halfway through a write."""
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return v


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    return v


# Every string an operator sends is Text; a reason must also say something.
Text = Annotated[str, AfterValidator(_plain_text), Field(json_schema_extra={"pattern": "^[^\\x00]*$"})]
ReasonText = Annotated[Text, AfterValidator(_not_blank)]
IdempotencyKey = Annotated[Text, Field(min_length=1, max_length=100,
                                       description="a retry with the same key gets the first answer and moves nothing")]


def ctx_of(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


check_card_no = lookup.check_card_no


async def card_or_404(ctx: ApiContext, card_no: int) -> CardView:
    return await lookup.card(ctx.shards, card_no)


def op_key(scope: str, card_no: int, client_key: str | None = None) -> str:
    """An op's idempotency key: the client's (scoped to the card and the service), or a fresh
    one for ops that are idempotent by nature (setting a status or a product)."""
    return f"{scope}:{card_no}:{client_key if client_key is not None else uuid.uuid4().hex}"
