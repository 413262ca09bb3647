"""Merchants of the merchant alliance at the card-services desk: register a merchant with its
contract (commission) and member discount, register its POS terminals, change the discount
from a later time, and show what a settlement window gave away in member discounts.

Order matters for "the discount applies from the registration on": the terms are committed,
then pushed to every account shard, and only then are the POS terminals registered (until then
they cannot authenticate, so no tap reaches a shard before its terms). A push that fails is a
503 with everything committed so far kept; the same request again pushes again (idempotent).
A shard that restarts reads every merchant's terms at its load (actors/account_shard.py).
"""

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..actors.shard_client import ShardClient
from ..persistence import merchants as store
from ..persistence.merchants import MerchantCode, NewMerchant, Outcome
from .errors import Conflict, Invalid, NotFound
from .programmes import merchant_categories
from .who import Who


@dataclass(frozen=True)
class Desk:
    """What the merchant desk is given."""

    pool: asyncpg.Pool
    shards: ShardClient
    fare_table_path: pathlib.Path


async def register(desk: Desk, who: Who, m: NewMerchant, terminal_ids: Sequence[int],
                   now_ms: int) -> tuple[dict[str, Any], bool]:
    """(the merchant, whether anything was new). Conflict: registered with other terms, or a
    terminal that is something else; Invalid: a category the fare table does not have."""
    known = merchant_categories(desk.fare_table_path)
    if m.category not in known:
        raise Invalid(f"category: unknown {m.category!r}; the fare table has {sorted(known)}", field="category")
    try:
        store.check(m)
    except ValueError as exc:
        raise Invalid(str(exc), field=_field_of(str(exc))) from None
    if terminal_ids:  # refused whole, before anything is written
        taken = await store.conflicting_terminals(desk.pool, m.merchant_id, terminal_ids)
        if taken:
            raise Conflict(f"terminals registered as another kind or route, or attached elsewhere: {taken}",
                           result="terminal_conflict", terminals=taken)
    async with desk.pool.acquire() as conn:
        done = await store.register(conn, m, now_ms, who.name, who.role)
    _raise_for(done, m.merchant_id)
    new = done.code == MerchantCode.OK
    await _push(desk, m.merchant_id)
    if terminal_ids:
        async with desk.pool.acquire() as conn:
            added = await store.add_terminals(conn, m.merchant_id, terminal_ids, who.name, who.role)
        _raise_for(added, m.merchant_id)
        new = new or added.code == MerchantCode.OK
    return await get(desk.pool, m.merchant_id, now_ms), new


async def add_terminals(desk: Desk, who: Who, merchant_id: int, terminal_ids: Sequence[int],
                        now_ms: int) -> tuple[dict[str, Any], bool]:
    """More POS terminals for a registered merchant (its terms pushed first, see above)."""
    await get(desk.pool, merchant_id, now_ms)  # NotFound
    await _push(desk, merchant_id)
    async with desk.pool.acquire() as conn:
        added = await store.add_terminals(conn, merchant_id, terminal_ids, who.name, who.role)
    _raise_for(added, merchant_id)
    return await get(desk.pool, merchant_id, now_ms), added.code == MerchantCode.OK


async def set_discount(desk: Desk, who: Who, merchant_id: int, percent: int, from_ms: int,
                       now_ms: int) -> tuple[dict[str, Any], bool]:
    """The member discount from ``from_ms`` (not before now) on; taps before keep theirs."""
    async with desk.pool.acquire() as conn:
        done = await store.set_discount(conn, merchant_id, percent, from_ms, now_ms, who.name, who.role)
    if done.code == MerchantCode.RETROACTIVE:
        raise Invalid(done.detail, field="effective_from_ms")
    _raise_for(done, merchant_id)
    await _push(desk, merchant_id)
    return await get(desk.pool, merchant_id, now_ms), done.code == MerchantCode.OK


async def get(pool: asyncpg.Pool, merchant_id: int, now_ms: int) -> dict[str, Any]:
    """The merchant with its discounts, the one in force at ``now_ms``, and its terminals."""
    found = await store.get(pool, merchant_id)
    if found is None:
        raise NotFound(f"merchant {merchant_id} is not registered")
    in_force = [d for d in found["discounts"] if d["effective_from_ms"] <= now_ms]
    found["member_discount_percent"] = in_force[-1]["member_discount_percent"] if in_force else 0
    return found


async def listing(pool: asyncpg.Pool, after_id: int, limit: int) -> list[dict[str, Any]]:
    return await store.listing(pool, after_id, limit)


async def window_line(pool: asyncpg.Pool, merchant_id: int, window_id: str) -> dict[str, Any]:
    found = await store.window_line(pool, merchant_id, window_id)
    if found is None:
        raise NotFound(f"merchant {merchant_id} or settlement window {window_id} not found")
    return found


async def _push(desk: Desk, merchant_id: int) -> None:
    """The merchant's terms to every shard (ShardUnavailable: the API's 503, retry the request)."""
    await desk.shards.merge_merchants(await store.terms(desk.pool, merchant_id))


def _raise_for(done: Outcome, merchant_id: int) -> None:
    if done.code == MerchantCode.UNKNOWN:
        raise NotFound(done.detail or f"merchant {merchant_id} is not registered")
    if done.code == MerchantCode.CONFLICT:
        raise Conflict(done.detail, result="merchant_conflict")
    if done.code == MerchantCode.TERMINAL_CONFLICT:
        raise Conflict(f"terminals {done.detail}", result="terminal_conflict", terminals=list(done.terminals))


def _field_of(message: str) -> str:
    for name in ("merchant_id", "member_discount_percent", "commission_bp", "name"):
        if message.startswith(name):
            return name
    return "merchant_id"
