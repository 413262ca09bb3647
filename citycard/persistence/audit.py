"""The append-only audit log's one write: who, what, when, before and after (Postgres
refuses updates and deletes of its rows)."""

import json
from typing import Any

import asyncpg


async def record(conn: asyncpg.Connection | asyncpg.Pool, name: str, role: str, action: str, subject: str,
                 before: Any = None, after: Any = None, reason: str = "", op_key: str | None = None) -> int | None:
    """The new entry's id; None when an entry for ``op_key`` exists already (a retry)."""
    audit_id = await conn.fetchval(
        "INSERT INTO audit_log (operator, role, action, subject, before, after, reason, op_key)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8)"
        " ON CONFLICT (op_key) WHERE op_key IS NOT NULL DO NOTHING RETURNING audit_id",
        name, role, action, subject,
        None if before is None else json.dumps(before, default=str),
        None if after is None else json.dumps(after, default=str), reason, op_key,
    )
    return None if audit_id is None else int(audit_id)


async def of_op(conn: asyncpg.Connection | asyncpg.Pool, op_key: str) -> dict[str, Any] | None:
    """The entry written for a card-service op, before and after decoded; None if none yet."""
    row = await conn.fetchrow("SELECT * FROM audit_log WHERE op_key = $1", op_key)
    return None if row is None else {**dict(row), "before": _json(row["before"]), "after": _json(row["after"])}


async def entries(conn: asyncpg.Connection | asyncpg.Pool, subject: str | None, after_id: int,
                  limit: int) -> list[dict[str, Any]]:
    """Entries oldest first after ``after_id`` (of one subject, if given), before and after decoded."""
    rows = await conn.fetch(
        "SELECT * FROM audit_log WHERE audit_id > $1 AND ($2::text IS NULL OR subject = $2)"
        " ORDER BY audit_id LIMIT $3", after_id, subject, limit)
    return [{**dict(r), "before": _json(r["before"]), "after": _json(r["after"])} for r in rows]


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v
