"""Merchants of the merchant alliance on Postgres (migration 0013): the merchant, its
effective-dated member discounts, its POS terminals, and what its settlement windows gave
away in member discounts. Each write is one transaction with its audit entry; outcomes are
values (``MerchantCode``), bad input is ValueError.

A merchant is also a settlement counterparty (kind 'merchant', id ``merchant-<id>``) with the
commission of its contract; its terminals are attached to it (persistence/settlement.py), so a
window's line for it is booked as every counterparty's is.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import asyncpg

from ..domain.merchant_book import MerchantTerms
from ..domain.results import Result
from ..domain.settlement import SettleCode
from ..domain.taps import TapKind
from . import audit, settlement

MAX_MERCHANT_ID = 2**31 - 1  # terminals.route is an integer
MAX_TERMINAL_ID = 2**31 - 1  # terminals.terminal_id is an integer
MAX_TERMINALS_PER_CALL = 1000
MAX_TERMINALS_SHOWN = 10_000
MAX_LIST = 1000
_MERCHANT = int(TapKind.MERCHANT)
_OK = int(Result.OK)


class MerchantCode(IntEnum):
    OK = 0  # done now
    ALREADY = 1  # the same request was done before: nothing changed
    CONFLICT = 2  # registered with other terms (the detail says which)
    UNKNOWN = 3  # no such merchant
    TERMINAL_CONFLICT = 4  # a terminal is registered as something else, or attached elsewhere
    RETROACTIVE = 5  # a discount change effective before now


@dataclass(frozen=True, slots=True)
class NewMerchant:
    merchant_id: int
    name: str
    category: str
    member_discount_percent: int
    commission_bp: int


@dataclass(frozen=True, slots=True)
class Outcome:
    code: MerchantCode
    detail: str = ""
    terminals: tuple[int, ...] = ()  # the terminals the detail is about


def counterparty_of(merchant_id: int) -> str:
    return f"merchant-{merchant_id}"


def check(m: NewMerchant) -> None:
    if not 0 < m.merchant_id <= MAX_MERCHANT_ID:
        raise ValueError(f"merchant_id must be 1..{MAX_MERCHANT_ID}")
    if not 0 <= m.member_discount_percent <= 100:
        raise ValueError("member_discount_percent must be 0..100")
    settlement.check_counterparty(counterparty_of(m.merchant_id), "merchant", m.name, m.commission_bp)


async def register(conn: asyncpg.Connection, m: NewMerchant, now_ms: int, who: str, role: str) -> Outcome:
    """The merchant, its counterparty and its first discount (from ``now_ms``), with an audit
    entry: OK when new, ALREADY for the same terms, CONFLICT (naming what differs) if not."""
    check(m)
    cp = counterparty_of(m.merchant_id)
    async with conn.transaction():
        there = await _terms_of(conn, m.merchant_id, lock=True)
        if there is not None:
            differs = [k for k, v in there.items() if getattr(m, k) != v]
            if differs:
                return Outcome(MerchantCode.CONFLICT, f"merchant {m.merchant_id} is registered with other "
                               f"{', '.join(differs)}: {', '.join(f'{k}={there[k]!r}' for k in differs)}")
            return Outcome(MerchantCode.ALREADY)
        code = await settlement.add_counterparty(conn, cp, "merchant", m.name, m.commission_bp)
        if code not in (SettleCode.OK, SettleCode.ALREADY):
            return Outcome(MerchantCode.CONFLICT, f"counterparty {cp} is registered with other terms")
        await conn.execute(
            "INSERT INTO merchants (merchant_id, counterparty_id, name, category, registered_ms, registered_by)"
            " VALUES ($1, $2, $3, $4, $5, $6)", m.merchant_id, cp, m.name, m.category, now_ms, who)
        await conn.execute(
            "INSERT INTO merchant_discounts (merchant_id, effective_from_ms, member_discount_percent, set_by)"
            " VALUES ($1, $2, $3, $4)", m.merchant_id, now_ms, m.member_discount_percent, who)
        await audit.record(conn, who, role, "merchant.register", f"merchant:{m.merchant_id}", None,
                           {"name": m.name, "category": m.category, "member_discount_percent": m.member_discount_percent,
                            "commission_bp": m.commission_bp, "effective_from_ms": now_ms})
    return Outcome(MerchantCode.OK)


async def _terms_of(conn: asyncpg.Connection, merchant_id: int, lock: bool = False) -> dict[str, Any] | None:
    """What a registration is compared with: name, category, commission and the first discount."""
    row = await conn.fetchrow(
        "SELECT m.name, m.category, c.commission_bp, (SELECT member_discount_percent FROM merchant_discounts d"
        "  WHERE d.merchant_id = m.merchant_id ORDER BY effective_from_ms LIMIT 1) AS member_discount_percent"
        " FROM merchants m JOIN counterparties c USING (counterparty_id) WHERE m.merchant_id = $1"
        + (" FOR UPDATE OF m" if lock else ""), merchant_id)
    return None if row is None else dict(row)


async def add_terminals(conn: asyncpg.Connection, merchant_id: int, terminal_ids: Sequence[int], who: str,
                        role: str) -> Outcome:
    """Register the POS terminals (kind merchant, route = the merchant id) and attach them to
    the merchant's counterparty, all or none. OK with the new ones, ALREADY when all were its
    terminals, TERMINAL_CONFLICT naming those registered otherwise or attached elsewhere."""
    try:
        return await _add_terminals(conn, merchant_id, sorted(set(terminal_ids)), who, role)
    except _Rollback as rb:  # an outcome that undid the transaction
        return rb.outcome


async def _add_terminals(conn: asyncpg.Connection, merchant_id: int, ids: list[int], who: str, role: str) -> Outcome:
    if not 1 <= len(ids) <= MAX_TERMINALS_PER_CALL or any(not 0 < t <= MAX_TERMINAL_ID for t in ids):
        raise ValueError(f"1..{MAX_TERMINALS_PER_CALL} terminal ids, each 1..{MAX_TERMINAL_ID}")
    async with conn.transaction():
        name = await conn.fetchval("SELECT name FROM merchants WHERE merchant_id = $1 FOR SHARE", merchant_id)
        if name is None:
            return Outcome(MerchantCode.UNKNOWN, f"merchant {merchant_id} is not registered")
        other = [r[0] for r in await conn.fetch(
            "SELECT terminal_id FROM terminals WHERE terminal_id = ANY($1::integer[]) AND (kind <> $2 OR route <> $3)"
            " ORDER BY 1", ids, _MERCHANT, merchant_id)]
        if other:
            return Outcome(MerchantCode.TERMINAL_CONFLICT, f"registered as another kind or route: {other}", tuple(other))
        new = [r[0] for r in await conn.fetch(
            "INSERT INTO terminals (terminal_id, kind, route, name) SELECT t, $2, $3, $4 FROM unnest($1::integer[]) t"
            " ON CONFLICT (terminal_id) DO NOTHING RETURNING terminal_id", ids, _MERCHANT, merchant_id, name[:200])]
        code, found = await settlement.attach(conn, counterparty_of(merchant_id), ids)
        if code == SettleCode.TERMINAL_TAKEN:
            raise _Rollback(Outcome(MerchantCode.TERMINAL_CONFLICT, f"attached to another counterparty: {found}",
                                    tuple(found)))
        if code != SettleCode.OK:
            raise _Rollback(Outcome(MerchantCode.UNKNOWN, f"counterparty of merchant {merchant_id}: {code.name}"))
        if not new and not found:
            return Outcome(MerchantCode.ALREADY)
        await audit.record(conn, who, role, "merchant.terminals", f"merchant:{merchant_id}", None,
                           {"registered": sorted(new), "attached": found})
    return Outcome(MerchantCode.OK, terminals=tuple(sorted(set(new) | set(found))))


async def conflicting_terminals(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: int,
                                terminal_ids: Sequence[int]) -> list[int]:
    """Those of the terminals registered as another kind or route, or attached to another
    counterparty (a check before a registration writes anything; add_terminals checks again)."""
    rows = await conn.fetch(
        "SELECT terminal_id FROM terminals WHERE terminal_id = ANY($1::integer[]) AND (kind <> $2 OR route <> $3)"
        " UNION SELECT terminal_id FROM terminal_counterparty WHERE terminal_id = ANY($1::integer[])"
        " AND counterparty_id <> $4 ORDER BY 1", list(terminal_ids), _MERCHANT, merchant_id, counterparty_of(merchant_id))
    return [r[0] for r in rows]


class _Rollback(Exception):  # noqa: N818 - not an error: carries an outcome out of a transaction
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome




async def set_discount(conn: asyncpg.Connection, merchant_id: int, percent: int, from_ms: int, now_ms: int,
                       who: str, role: str) -> Outcome:
    """A new member discount from ``from_ms`` on: RETROACTIVE if before ``now_ms``; ALREADY for
    the same change again; CONFLICT for another percent from the same time."""
    if not 0 <= percent <= 100:
        raise ValueError("member_discount_percent must be 0..100")
    if from_ms < now_ms:
        return Outcome(MerchantCode.RETROACTIVE, f"effective_from_ms {from_ms} is before now ({now_ms}): a discount"
                       " never changes what was already paid")
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM merchants WHERE merchant_id = $1 FOR UPDATE", merchant_id) is None:
            return Outcome(MerchantCode.UNKNOWN, f"merchant {merchant_id} is not registered")
        there = await conn.fetchval(
            "SELECT member_discount_percent FROM merchant_discounts WHERE merchant_id = $1 AND effective_from_ms = $2",
            merchant_id, from_ms)
        if there is not None:
            if there == percent:
                return Outcome(MerchantCode.ALREADY)
            return Outcome(MerchantCode.CONFLICT, f"a discount of {there}% is set from {from_ms} already")
        before = await conn.fetchval(
            "SELECT member_discount_percent FROM merchant_discounts WHERE merchant_id = $1 AND effective_from_ms <= $2"
            " ORDER BY effective_from_ms DESC LIMIT 1", merchant_id, from_ms)
        await conn.execute(
            "INSERT INTO merchant_discounts (merchant_id, effective_from_ms, member_discount_percent, set_by)"
            " VALUES ($1, $2, $3, $4)", merchant_id, from_ms, percent, who)
        await audit.record(conn, who, role, "merchant.discount", f"merchant:{merchant_id}",
                           {"member_discount_percent": before},
                           {"member_discount_percent": percent, "effective_from_ms": from_ms})
    return Outcome(MerchantCode.OK)


async def terms(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: int | None = None) -> list[MerchantTerms]:
    """Every registered merchant's terms (or one merchant's), as the shards merge them."""
    rows = await conn.fetch(
        "SELECT m.merchant_id, d.effective_from_ms, m.name, m.category, d.member_discount_percent"
        " FROM merchants m JOIN merchant_discounts d USING (merchant_id)"
        " WHERE $1::integer IS NULL OR m.merchant_id = $1 ORDER BY 1, 2", merchant_id)
    return [MerchantTerms(*r) for r in rows]


async def get(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: int) -> dict[str, Any] | None:
    """The merchant: its terms, discounts (oldest first) and terminals; None if unknown."""
    row = await conn.fetchrow(
        "SELECT m.merchant_id, m.name, m.category, c.commission_bp, m.counterparty_id, m.registered_ms,"
        " m.registered_by FROM merchants m JOIN counterparties c USING (counterparty_id) WHERE m.merchant_id = $1",
        merchant_id)
    if row is None:
        return None
    discounts = [dict(r) for r in await conn.fetch(
        "SELECT effective_from_ms, member_discount_percent, set_by FROM merchant_discounts WHERE merchant_id = $1"
        " ORDER BY effective_from_ms", merchant_id)]
    terminals = [dict(r) for r in await conn.fetch(
        "SELECT tc.terminal_id, t.enabled FROM terminal_counterparty tc JOIN terminals t USING (terminal_id)"
        " WHERE tc.counterparty_id = $1 ORDER BY 1 LIMIT $2", row["counterparty_id"], MAX_TERMINALS_SHOWN)]
    return {**dict(row), "discounts": discounts, "terminals": terminals}


async def listing(conn: asyncpg.Connection | asyncpg.Pool, after_id: int, limit: int) -> list[dict[str, Any]]:
    """A page of merchants by id, each with its terminal count."""
    rows = await conn.fetch(
        "SELECT m.merchant_id, m.name, m.category, c.commission_bp, m.registered_ms,"
        " (SELECT count(*) FROM terminal_counterparty tc WHERE tc.counterparty_id = m.counterparty_id) AS terminals"
        " FROM merchants m JOIN counterparties c USING (counterparty_id) WHERE m.merchant_id > $1"
        " ORDER BY 1 LIMIT $2", after_id, min(limit, MAX_LIST))
    return [dict(r) for r in rows]


async def window_line(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: int,
                      window_id: str) -> dict[str, Any] | None:
    """The merchant's line of a closed window (gross, commission, net as settlement booked them)
    with the member discounts given at its terminals in the window: what members would have paid
    without the discount less what they paid, from the same journal rows the line books. None:
    no such merchant or window; the line's figures are 0 if the window is open or booked nothing."""
    w = await conn.fetchrow("SELECT start_ms, end_ms, state FROM settlement_windows WHERE window_id = $1", window_id)
    cp = await conn.fetchval("SELECT counterparty_id FROM merchants WHERE merchant_id = $1", merchant_id)
    if w is None or cp is None:
        return None
    line = await conn.fetchrow(
        "SELECT taps, gross_fen, commission_fen, net_fen FROM settlement_lines WHERE window_id = $1"
        " AND counterparty_id = $2", window_id, cp)
    given = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE j.request_fen > j.amount_fen) AS member_taps,"
        " coalesce(sum(j.request_fen - j.amount_fen), 0)::bigint AS member_discount_fen FROM journal j"
        " JOIN terminal_counterparty tc ON tc.terminal_id = j.terminal_id"
        f" WHERE {settlement.TAP_WHERE} AND tc.counterparty_id = $3 AND j.kind = $4",
        w["start_ms"], w["end_ms"], cp, _MERCHANT)
    figures = dict(line) if line is not None else {"taps": 0, "gross_fen": 0, "commission_fen": 0, "net_fen": 0}
    return {"merchant_id": merchant_id, "counterparty_id": cp, "window_id": window_id, "state": w["state"],
            **figures, **dict(given)}
