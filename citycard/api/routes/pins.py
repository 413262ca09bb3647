"""PINs: set and reset at a counter, change and verify on the holder's channels, with a lockout.

A check first reserves a try with one atomic UPDATE (``failed_tries + 1`` while below the
limit) and only then runs the KDF, so however many guesses arrive at once, at most
``pin_max_tries`` of them are ever evaluated. A right PIN gives back its reservation and the
wrong tries before it; a wrong one keeps it. The PIN itself is never logged, audited or echoed.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ...domain.cards import CardStatus
from .. import audit
from ..auth import Operator, Perm, require
from ..context import ApiContext
from ..errors import ApiError
from ..pins import (
    PIN_PATTERN,
    KdfBusy,
    KdfGate,
    KdfParams,
    hash_pin,
    new_salt,
    pin_matches,
    pin_well_formed,
)
from .common import CardNo, card_or_404, ctx_of

router = APIRouter(tags=["pins"])

# Half the cores for PIN checks (each ~0.1 s of CPU), the rest for the loop and the gateway.
KDF_WORKERS = max(1, (os.cpu_count() or 2) // 2)
KDF_CAPACITY = 64  # PIN checks in progress or waiting; beyond that 503, no try counted


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
HOLDER: Responses = {401: WRONG, 404: UNKNOWN, 422: BAD_INPUT, 423: LOCKED, 503: BUSY}

_STATE_COLS = "failed_tries, kdf, updated_at"
# Reserve a try: the one atomic step that bounds evaluated guesses under concurrency.
_RESERVE = ("UPDATE card_pins SET failed_tries = failed_tries + 1 WHERE card_no = $1 AND failed_tries < $2"
            " RETURNING failed_tries, pin_hash, salt, kdf")
# A right PIN: its own try and the wrong ones before it are gone; tries reserved since stay.
_GIVE_BACK = ("UPDATE card_pins SET failed_tries = GREATEST(failed_tries - $3, 0)"
              " WHERE card_no = $1 AND pin_hash = $2")
_REPLACE = ("UPDATE card_pins SET pin_hash = $2, salt = $3, kdf = $4, failed_tries = 0, updated_at = now()"
            " WHERE card_no = $1 AND pin_hash = $5 RETURNING " + _STATE_COLS)


@dataclass(frozen=True)
class StoredPin:
    pin_hash: bytes
    kdf: str


def _gate(request: Request) -> KdfGate:
    gate: KdfGate | None = getattr(request.app.state, "pin_kdf_gate", None)
    if gate is None:  # one per app, made inside its event loop
        gate = request.app.state.pin_kdf_gate = KdfGate(KDF_WORKERS, KDF_CAPACITY)
    return gate


@contextmanager
def kdf_slot(request: Request) -> Iterator[KdfGate]:
    gate = _gate(request)
    try:
        with gate.ticket():
            yield gate
    except KdfBusy:
        raise ApiError(503, "too many PIN checks at once; retry shortly") from None


def _params(ctx: ApiContext) -> KdfParams:
    return KdfParams(ctx.settings.api.pin_kdf_n)


def _state(card_no: int, row: asyncpg.Record | None, max_tries: int) -> PinState:
    if row is None:
        return PinState(card_no=card_no, pin_set=False, locked=False, failed_tries=0, tries_left=max_tries,
                        kdf=None, updated_at=None)
    tries = row["failed_tries"]
    return PinState(card_no=card_no, pin_set=True, locked=tries >= max_tries, failed_tries=tries,
                    tries_left=max(max_tries - tries, 0), kdf=row["kdf"], updated_at=row["updated_at"])


async def live_card(ctx: ApiContext, card_no: int, cancelled_status: int) -> None:
    """404 unknown, 422 bad check digit; a cancelled (or replaced) card's PIN is of no use."""
    view = await card_or_404(ctx, card_no)
    if view.status == CardStatus.CANCELLED:
        raise ApiError(cancelled_status, "the card is cancelled or replaced", result="CARD_CANCELLED")


def _locked_error(max_tries: int) -> ApiError:
    return ApiError(423, f"the PIN is locked after {max_tries} wrong tries; a reset at a service counter"
                         " unlocks it", tries_left=0)


def _no_pin_error(card_no: int) -> ApiError:
    return ApiError(409, f"no PIN is set on card {card_no}; a counter sets the first one")


async def check_pin(request: Request, card_no: int, pin: str, *, channel: str,
                    cancelled_status: int = 409, rehash: bool = True) -> StoredPin:
    """Count a try and check ``pin``: the stored PIN when right, else ApiError 401/409/423.
    ``channel`` (e.g. "pin/verify") goes into the lockout's audit entry."""
    ctx = ctx_of(request)
    await live_card(ctx, card_no, cancelled_status)
    max_tries = ctx.settings.api.pin_max_tries
    with kdf_slot(request) as gate:
        row = await ctx.pool.fetchrow(_RESERVE, card_no, max_tries)
        if row is None:
            exists = await ctx.pool.fetchval("SELECT true FROM card_pins WHERE card_no = $1", card_no)
            raise _locked_error(max_tries) if exists else _no_pin_error(card_no)
        tries = row["failed_tries"]  # this try included
        if not await gate.run(pin_matches, pin, row["salt"], row["pin_hash"], row["kdf"]):
            left = max_tries - tries
            if left > 0:
                raise ApiError(401, "wrong PIN", tries_left=left)
            # exactly one request reaches the limit: the reservation above is atomic
            await audit.record(ctx.pool, f"self:{card_no}", "pin.lockout", f"card:{card_no}",
                               {"failed_tries": tries - 1}, {"failed_tries": tries, "locked": True}, channel)
            raise ApiError(401, "wrong PIN; the PIN is now locked until a reset at a service counter",
                           tries_left=0)
        await ctx.pool.execute(_GIVE_BACK, card_no, row["pin_hash"], tries)
        stored = StoredPin(row["pin_hash"], row["kdf"])
        if rehash and stored.kdf != _params(ctx).text():
            stored = await _rehash(ctx, gate, card_no, pin, stored)
    return stored


async def _rehash(ctx: ApiContext, gate: KdfGate, card_no: int, pin: str, old: StoredPin) -> StoredPin:
    """The stored parameters are not the current ones (the cost was raised): store the PIN anew."""
    salt = new_salt()
    pin_hash, kdf = await gate.run(hash_pin, pin, salt, _params(ctx))
    async with ctx.pool.acquire() as conn, conn.transaction():
        # failed_tries kept: a rehash is no reset; pin_hash guards against a concurrent change
        done = await conn.fetchval("UPDATE card_pins SET pin_hash = $2, salt = $3, kdf = $4 WHERE card_no = $1"
                                   " AND pin_hash = $5 RETURNING true", card_no, pin_hash, salt, kdf, old.pin_hash)
        if not done:
            return old
        await audit.record(conn, f"self:{card_no}", "pin.rehash", f"card:{card_no}",
                           {"kdf": old.kdf}, {"kdf": kdf})
    return StoredPin(pin_hash, kdf)


@router.get("/cards/{card_no}/pin", response_model=PinState, responses=COUNTER)
async def pin_state(card_no: CardNo, request: Request,
                    op: Operator = Depends(require(Perm.READ))) -> PinState:  # noqa: B008
    """Whether a PIN is set and whether it is locked (never the PIN or its hash)."""
    ctx = ctx_of(request)
    await card_or_404(ctx, card_no)
    row = await ctx.pool.fetchrow(f"SELECT {_STATE_COLS} FROM card_pins WHERE card_no = $1", card_no)
    return _state(card_no, row, ctx.settings.api.pin_max_tries)


@router.put("/cards/{card_no}/pin", status_code=201, response_model=PinState,
            responses={**COUNTER, 503: BUSY,
                       409: error_response("a PIN is already set, or the card is cancelled")})
async def set_pin(card_no: CardNo, body: PinIn, request: Request,
                  op: Operator = Depends(require(Perm.CARDS))) -> PinState:  # noqa: B008
    """Set a card's first PIN at a counter. An existing PIN is reset or changed instead."""
    ctx = ctx_of(request)
    await live_card(ctx, card_no, 409)
    if await ctx.pool.fetchval("SELECT true FROM card_pins WHERE card_no = $1", card_no):
        raise _already_set(card_no)  # early, before spending a KDF on it
    salt = new_salt()
    with kdf_slot(request) as gate:
        pin_hash, kdf = await gate.run(hash_pin, body.pin, salt, _params(ctx))
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("INSERT INTO card_pins (card_no, pin_hash, salt, kdf) VALUES ($1, $2, $3, $4)"
                                  f" ON CONFLICT (card_no) DO NOTHING RETURNING {_STATE_COLS}",
                                  card_no, pin_hash, salt, kdf)
        if row is None:
            raise _already_set(card_no)  # set concurrently
        await audit.record(conn, op, "pin.set", f"card:{card_no}", None, {"kdf": kdf})
    return _state(card_no, row, ctx.settings.api.pin_max_tries)


def _already_set(card_no: int) -> ApiError:
    return ApiError(409, f"card {card_no} already has a PIN: reset it at a counter or change it with the old PIN")


@router.post("/cards/{card_no}/pin/reset", response_model=PinState,
             responses={**COUNTER, 503: BUSY, 409: error_response("no PIN is set, or the card is cancelled")})
async def reset_pin(card_no: CardNo, body: ResetIn, request: Request,
                    op: Operator = Depends(require(Perm.CARDS))) -> PinState:  # noqa: B008
    """A clerk who has identified the holder replaces the PIN; this also lifts a lockout."""
    ctx = ctx_of(request)
    await live_card(ctx, card_no, 409)
    if not await ctx.pool.fetchval("SELECT true FROM card_pins WHERE card_no = $1", card_no):
        raise _no_pin_error(card_no)
    salt = new_salt()
    with kdf_slot(request) as gate:
        pin_hash, kdf = await gate.run(hash_pin, body.new_pin, salt, _params(ctx))
    max_tries = ctx.settings.api.pin_max_tries
    async with ctx.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(f"SELECT {_STATE_COLS}, pin_hash FROM card_pins WHERE card_no = $1"
                                     " FOR UPDATE", card_no)
        if before is None:
            raise _no_pin_error(card_no)
        row = await conn.fetchrow(_REPLACE, card_no, pin_hash, salt, kdf, before["pin_hash"])
        await audit.record(conn, op, "pin.reset", f"card:{card_no}", _audit_view(before, max_tries),
                           _audit_view(row, max_tries), body.reason)
    return _state(card_no, row, max_tries)


def _audit_view(row: asyncpg.Record, max_tries: int) -> dict[str, Any]:
    return {"failed_tries": row["failed_tries"], "locked": row["failed_tries"] >= max_tries, "kdf": row["kdf"]}


@router.post("/cards/{card_no}/pin/change", response_model=Verified,
             responses={**HOLDER, 409: error_response(
                 "no PIN is set, the card is cancelled, or the PIN was changed meanwhile")})
async def change_pin(card_no: CardNo, body: ChangeIn, request: Request) -> Verified:
    """The holder changes the PIN with the old one (no operator token). A wrong old PIN counts
    as a failed try."""
    if body.new_pin == body.old_pin:
        raise ApiError(422, "new_pin: must differ from old_pin", field="new_pin")
    ctx = ctx_of(request)
    old = await check_pin(request, card_no, body.old_pin, channel="pin/change", rehash=False)
    salt = new_salt()
    with kdf_slot(request) as gate:
        pin_hash, kdf = await gate.run(hash_pin, body.new_pin, salt, _params(ctx))
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_REPLACE, card_no, pin_hash, salt, kdf, old.pin_hash)
        if row is None:
            raise ApiError(409, "the PIN was changed or reset meanwhile; nothing changed")
        await audit.record(conn, f"self:{card_no}", "pin.change", f"card:{card_no}",
                           {"kdf": old.kdf}, {"kdf": kdf})
    return Verified()


@router.post("/cards/{card_no}/pin/verify", response_model=Verified,
             responses={**HOLDER, 409: error_response("no PIN is set, or the card is cancelled")})
async def verify_pin(card_no: CardNo, body: PinIn, request: Request) -> Verified:
    """Check a PIN for an online payment: ``{"ok": true}``, or 401 with the tries left. After
    ``pin_max_tries`` wrong PINs in a row every answer is 423 until a counter reset. Only the
    PIN is checked: a payment on a card reported lost is refused by the card's shard."""
    await check_pin(request, card_no, body.pin, channel="pin/verify")
    return Verified()
