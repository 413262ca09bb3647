"""Shapes and helpers shared by the routes."""

from typing import Annotated

from fastapi import Path, Request
from pydantic import AfterValidator, Field

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
