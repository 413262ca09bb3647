"""The SQL of the audit reconciler: money ops in the journal with no audit entry, and how far
each shard has been checked."""

import asyncpg

from ..domain.purses import PURSE_NAMES
from .migrate import journal_partition

_PURSE_COLUMNS = ", ".join(f"j.d_{n}" for n in PURSE_NAMES)


async def checked_up_to(conn: asyncpg.Connection | asyncpg.Pool, shard_id: int) -> int:
    lsn = await conn.fetchval("SELECT lsn FROM audit_reconciled WHERE shard_id = $1", shard_id)
    return int(lsn or 0)


async def unaudited(conn: asyncpg.Connection | asyncpg.Pool, shard_id: int, after_lsn: int,
                    key_prefixes: list[str], limit: int) -> list[asyncpg.Record]:
    """OK op rows after ``after_lsn`` whose key starts with one of ``key_prefixes``, oldest
    first, each with ``audited`` (an entry has its key)."""
    return list(await conn.fetch(
        f"SELECT j.lsn, j.card_no, j.kind, j.op_key, j.applied_ms, j.balance_after_fen, {_PURSE_COLUMNS},"
        "  EXISTS (SELECT 1 FROM audit_log a WHERE a.op_key = j.op_key) AS audited"
        f" FROM {journal_partition(shard_id)} j"
        " WHERE j.op_key IS NOT NULL AND j.lsn > $1 AND j.result = 0"
        "  AND j.op_key LIKE ANY ($2::text[])"
        " ORDER BY j.lsn LIMIT $3",
        after_lsn, [p + "%" for p in key_prefixes], limit))


async def mark_checked(conn: asyncpg.Connection, shard_id: int, lsn: int) -> None:
    await conn.execute(
        "INSERT INTO audit_reconciled (shard_id, lsn) VALUES ($1, $2)"
        " ON CONFLICT (shard_id) DO UPDATE SET lsn = GREATEST(audit_reconciled.lsn, EXCLUDED.lsn)", shard_id, lsn)
