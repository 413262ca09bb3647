"""HTTP shapes of the PIN services, shared by the counter's and the holder's routes."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..cards.pin_kdf import PIN_PATTERN, pin_well_formed


def _six_digits(v: str) -> str:
    if not pin_well_formed(v):
        raise ValueError("a PIN is 6 digits 0-9")
    return v


def _storable_reason(v: str) -> str:
    # Postgres text holds neither NUL nor a lone surrogate: bad input here, not a 500 later
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if "\x00" in v or not v.strip():
        raise ValueError("must be non-blank text without NUL characters")
    return v.strip()


Reason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_storable_reason)]
Pin = Annotated[str, Field(min_length=6, max_length=6, json_schema_extra={"pattern": PIN_PATTERN},
                           examples=["482913"], description="6 digits"), AfterValidator(_six_digits)]


class PinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: Pin


class ResetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    new_pin: Pin
    reason: Reason = Field(description="why the PIN is reset, and how the holder was identified")


class ChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    old_pin: Pin
    new_pin: Pin


class LoginIn(BaseModel):
    """All three: a stranger who knows card numbers knows nothing else."""

    model_config = ConfigDict(extra="forbid")
    card_no: int = Field(strict=True, ge=1, le=10**18 - 1, description="the card number printed on the card")
    citizen_id: str = Field(min_length=18, max_length=18, pattern="^[0-9]{17}[0-9Xx]$",
                            description="the holder's 18-character resident identity number")
    pin: Pin


class SessionOut(BaseModel):
    session_token: str = Field(description="send as `Authorization: Bearer ss_...` to the /self endpoints")
    card_no: int
    expires_in_s: int


class Verified(BaseModel):
    ok: Literal[True] = True


class PinState(BaseModel):
    card_no: int
    pin_set: bool
    locked: bool = Field(description="true: wrong PINs used up every try; only a counter reset unlocks")
    failed_tries: int = Field(description="wrong PINs in a row")
    tries_left: int
    kdf: str | None = Field(description="key derivation and its parameters, e.g. scrypt:n=16384,r=8,p=1")
    updated_at: datetime | None = Field(description="when the PIN was last set, reset or changed")


class ErrorOut(BaseModel):
    error: str
    field: str | None = Field(None, description="the offending input (422)")
    result: str | None = Field(None, description="the card's conflicting state, e.g. CARD_CANCELLED")
    tries_left: int | None = Field(None, description="wrong PIN (401) and locked (423) answers")
    retry_after_s: int | None = Field(None, description="429: seconds until a try frees up (also `Retry-After`)")
    errors: list[dict[str, str]] | None = Field(None, description="422 from validation: every problem found")


def error_response(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


Responses = dict[int | str, dict[str, Any]]
BAD_INPUT = error_response("malformed input; `field` names it (a PIN is 6 digits)")
UNKNOWN = error_response("unknown card")
BUSY = error_response("too many PIN checks at once; retry shortly (no try was counted)")
WRONG = error_response("wrong PIN; `tries_left` before the lockout (0: now locked)")
LOCKED = error_response("the PIN is locked after too many wrong tries; a reset at a counter unlocks it")
COUNTER: Responses = {401: error_response("no or unknown operator token"),
                      403: error_response("the operator's role lacks the permission"),
                      404: UNKNOWN, 422: BAD_INPUT}
LIMITED = error_response("too many failed tries from this source, to this card or with this token, or this "
                         "source has its share of PIN checks in progress: retry after `Retry-After` seconds")
VERIFY: Responses = {**COUNTER, 401: error_response("no or unknown operator token, or a wrong PIN (`tries_left`)"),
                     409: error_response("no PIN is set, or the card is lost (CARD_BLOCKED) or cancelled"),
                     423: LOCKED, 429: LIMITED, 503: BUSY}
SESSION: Responses = {401: error_response("no session, or an unknown or expired one: log in again"),
                      403: error_response("the card is cancelled or replaced"), 422: BAD_INPUT}
