"""PINs: set at a counter, reset by a clerk who identified the holder, changed and verified
by the holder. Every check counts a try first (atomically, in Postgres), so concurrent guesses
cannot exceed the lockout; the KDF runs in a bounded gate so a flood cannot take every core."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ..domain.cards import CardStatus
from ..domain.results import Result
from ..domain.views import CardView
from ..persistence import audit, holders
from ..persistence import pins as rows
from . import self_sessions
from .errors import Busy, CardServiceError, Conflict, Invalid, RateLimited, Refused
from .lookup import card
from .pin_kdf import KdfBusy, KdfParams, derive, hash_pin, new_salt, pin_matches
from .pin_policy import weak_reason
from .services import Services
from .who import Holder, Who


class WrongPin(CardServiceError):
    def __init__(self, message: str, tries_left: int) -> None:
        super().__init__(message)
        self.tries_left = tries_left


class PinLocked(CardServiceError):
    """Too many wrong PINs: only a counter reset unlocks."""


@dataclass(frozen=True)
class PinState:
    card_no: int
    pin_set: bool
    locked: bool
    failed_tries: int
    tries_left: int
    kdf: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class StoredPin:
    pin_hash: bytes
    kdf: str


def _state(card_no: int, row: asyncpg.Record | None, max_tries: int) -> PinState:
    if row is None:
        return PinState(card_no, False, False, 0, max_tries, None, None)
    tries = row["failed_tries"]
    return PinState(card_no, True, tries >= max_tries, tries, max(max_tries - tries, 0), row["kdf"],
                    rows.updated_at(row))


def _params(svc: Services) -> KdfParams:
    return KdfParams(svc.pin_kdf_n)


VERIFY = "pin/verify"  # the payment channel's check
_DUMMY_SALT = bytes(16)


async def _live_card(svc: Services, card_no: int) -> CardView:
    """Invalid / NotFound for no card; a cancelled (or replaced) card's PIN is of no use."""
    view = await card(svc.shards, card_no)
    if view.status == CardStatus.CANCELLED:
        raise Refused(Result.CARD_CANCELLED)
    return view


def _no_pin(card_no: int) -> Conflict:
    return Conflict(f"no PIN is set on card {card_no}; a counter sets the first one")


def _locked(max_tries: int) -> PinLocked:
    return PinLocked(f"the PIN is locked after {max_tries} wrong tries; a reset at a service counter unlocks it")


@contextmanager
def place(svc: Services, source: str | None) -> Iterator[None]:
    """A place in the KDF gate for a whole request that checks a PIN (``source``'s share of
    it; None: an operator's); RateLimited (429) or Busy (503) when there is none. Self-service
    takes it first, so that a flooding source's surplus costs no lookup at all."""
    try:
        with svc.kdf_gate.ticket(source):
            yield
    except KdfBusy as exc:
        if exc.per_source:
            raise RateLimited("this address has PIN checks in progress already; retry in a second", 1,
                              reason="kdf_source") from None
        raise Busy("too many PIN checks at once; retry shortly") from None


async def _hash(svc: Services, pin: str, source: str | None) -> tuple[bytes, bytes, str]:
    salt = new_salt()
    with place(svc, source):
        pin_hash, kdf = await svc.kdf_gate.run(hash_pin, pin, salt, _params(svc))
    return pin_hash, salt, kdf


async def _refuse_weak(svc: Services, card_no: int, pin: str, field: str) -> None:
    identity = await holders.identity_of_card(svc.pool, card_no)
    citizen_id, born = identity if identity is not None else (None, None)
    reason = weak_reason(pin, born, citizen_id)
    if reason is not None:
        raise Invalid(f"{field}: {reason}; choose another", field=field)


async def check(svc: Services, card_no: int, pin: str, *, channel: str, source: str | None, rehash: bool = True) -> StoredPin:
    """Count a try and check ``pin`` on a live card: the stored PIN when right; WrongPin,
    PinLocked, a Conflict (no PIN), Refused (cancelled or lost card) otherwise."""
    view = await _live_card(svc, card_no)
    if view.status == CardStatus.BLOCKED and channel == VERIFY:
        raise Refused(Result.CARD_BLOCKED)  # a lost card pays for nothing: its PIN proves nothing
    with place(svc, source):
        return await check_placed(svc, card_no, pin, channel=channel, rehash=rehash)


async def burn_like_a_check(svc: Services) -> None:
    """The KDF work of one PIN check, for an answer that must take as long as one would; in a
    place the caller holds."""
    await svc.kdf_gate.run(derive, "000000", _DUMMY_SALT, _params(svc))


async def check_placed(svc: Services, card_no: int, pin: str, *, channel: str, rehash: bool = True) -> StoredPin:
    """``check`` without looking at the card's status (the caller does, after), in a place
    the caller holds."""
    gate, max_tries = svc.kdf_gate, svc.pin_max_tries
    row = await rows.reserve_try(svc.pool, card_no, max_tries)
    if row is None:
        st = await rows.state(svc.pool, card_no)
        if st is None:
            raise _no_pin(card_no)
        if st["failed_tries"] >= max_tries:
            raise _locked(max_tries)
        # the failures and the checks in progress fill the allowance, but nothing is locked
        raise RateLimited("other checks of this PIN are in progress; retry in a second", 1, reason="pin_in_progress")
    if not await gate.run(pin_matches, pin, row["salt"], row["pin_hash"], row["kdf"]):
        tries = await rows.settle_wrong(svc.pool, card_no, row["pin_hash"])
        if tries is None:
            raise WrongPin("wrong PIN", tries_left=max_tries)  # replaced meanwhile: the new PIN counts anew
        left = max_tries - tries
        if left > 0:
            raise WrongPin("wrong PIN", tries_left=left)
        # exactly one request settles the last failure: reservations never exceed the limit
        holder = Holder(card_no)
        await audit.record(svc.pool, holder.name, holder.role, "pin.lockout", f"card:{card_no}",
                           {"failed_tries": tries - 1}, {"failed_tries": tries, "locked": True}, channel)
        raise WrongPin("wrong PIN; the PIN is now locked until a reset at a service counter", tries_left=0)
    await rows.settle_right(svc.pool, card_no, row["pin_hash"])
    stored = StoredPin(row["pin_hash"], row["kdf"])
    if rehash and stored.kdf != _params(svc).text():
        stored = await _rehash(svc, card_no, pin, stored)
    return stored


async def _rehash(svc: Services, card_no: int, pin: str, old: StoredPin) -> StoredPin:
    """The stored parameters are not the current ones (the cost was raised): store the PIN anew."""
    salt = new_salt()
    pin_hash, kdf = await svc.kdf_gate.run(hash_pin, pin, salt, _params(svc))
    async with svc.pool.acquire() as conn, conn.transaction():
        if not await rows.rehash(conn, card_no, pin_hash, salt, kdf, old.pin_hash):
            return old
        holder = Holder(card_no)
        await audit.record(conn, holder.name, holder.role, "pin.rehash", f"card:{card_no}", {"kdf": old.kdf},
                           {"kdf": kdf})
    return StoredPin(pin_hash, kdf)


async def state(svc: Services, card_no: int) -> PinState:
    """Whether a PIN is set and whether it is locked (never the PIN or its hash)."""
    await card(svc.shards, card_no)
    return _state(card_no, await rows.state(svc.pool, card_no), svc.pin_max_tries)


def _already_set(card_no: int) -> Conflict:
    return Conflict(f"card {card_no} already has a PIN: reset it at a counter or change it with the old PIN")


async def set_first(svc: Services, who: Who, card_no: int, pin: str, source: str | None) -> PinState:
    """A card's first PIN, at a counter; an existing PIN is reset or changed instead."""
    await _live_card(svc, card_no)
    if await rows.exists(svc.pool, card_no):
        raise _already_set(card_no)  # early, before spending a KDF on it
    await _refuse_weak(svc, card_no, pin, "pin")
    pin_hash, salt, kdf = await _hash(svc, pin, source)
    async with svc.pool.acquire() as conn, conn.transaction():
        row = await rows.insert(conn, card_no, pin_hash, salt, kdf)
        if row is None:
            raise _already_set(card_no)  # set concurrently
        await audit.record(conn, who.name, who.role, "pin.set", f"card:{card_no}", None, {"kdf": kdf})
    return _state(card_no, row, svc.pin_max_tries)


def _audit_view(row: asyncpg.Record, max_tries: int) -> dict[str, Any]:
    return {"failed_tries": row["failed_tries"], "locked": row["failed_tries"] >= max_tries, "kdf": row["kdf"]}


async def reset(svc: Services, who: Who, card_no: int, new_pin: str, reason: str, source: str | None) -> PinState:
    """A clerk who has identified the holder replaces the PIN; this also lifts a lockout and
    ends the card's self-service sessions (whoever knew the old PIN is logged out)."""
    await _live_card(svc, card_no)
    if not await rows.exists(svc.pool, card_no):
        raise _no_pin(card_no)
    await _refuse_weak(svc, card_no, new_pin, "new_pin")
    pin_hash, salt, kdf = await _hash(svc, new_pin, source)
    max_tries = svc.pin_max_tries
    async with svc.pool.acquire() as conn, conn.transaction():
        before = await rows.state(conn, card_no, lock=True)
        if before is None:
            raise _no_pin(card_no)
        row = await rows.replace(conn, card_no, pin_hash, salt, kdf, before["pin_hash"])
        assert row is not None  # the row is locked: nothing changed it meanwhile
        await audit.record(conn, who.name, who.role, "pin.reset", f"card:{card_no}", _audit_view(before, max_tries),
                           _audit_view(row, max_tries), reason)
    await self_sessions.end_all(svc, card_no)
    return _state(card_no, row, max_tries)


async def change(svc: Services, card_no: int, old_pin: str, new_pin: str, source: str | None) -> None:
    """The holder changes the PIN with the old one; a wrong old PIN counts as a failed try."""
    if new_pin == old_pin:
        raise Invalid("new_pin: must differ from old_pin", field="new_pin")
    await _refuse_weak(svc, card_no, new_pin, "new_pin")
    old = await check(svc, card_no, old_pin, channel="self/pin/change", source=source, rehash=False)
    pin_hash, salt, kdf = await _hash(svc, new_pin, source)
    async with svc.pool.acquire() as conn, conn.transaction():
        if await rows.replace(conn, card_no, pin_hash, salt, kdf, old.pin_hash) is None:
            raise Conflict("the PIN was changed or reset meanwhile; nothing changed")
        holder = Holder(card_no)
        await audit.record(conn, holder.name, holder.role, "pin.change", f"card:{card_no}", {"kdf": old.kdf},
                           {"kdf": kdf})
