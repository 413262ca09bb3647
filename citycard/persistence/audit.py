"""The append-only audit log's one write: who, what, when, before and after (Postgres
refuses updates and deletes of its rows)."""

import json
from typing import Any

import asyncpg


async def record(conn: asyncpg.Connection | asyncpg.Pool, name: str, role: str, action: str, subject: str,
                 before: Any = None, after: Any = None, reason: str = "") -> int:
    return int(await conn.fetchval(
        "INSERT INTO audit_log (operator, role, action, subject, before, after, reason)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7) RETURNING audit_id",
        name, role, action, subject,
        None if before is None else json.dumps(before, default=str),
        None if after is None else json.dumps(after, default=str), reason,
    ))


async def entries(conn: asyncpg.Connection | asyncpg.Pool, subject: str | None, after_id: int,
                  limit: int) -> list[dict[str, Any]]:
    """Entries oldest first after ``after_id`` (of one subject, if given), before and after decoded."""
    rows = await conn.fetch(
        "SELECT * FROM audit_log WHERE audit_id > $1 AND ($2::text IS NULL OR subject = $2)"
        " ORDER BY audit_id LIMIT $3", after_id, subject, limit)
    return [{**dict(r), "before": _json(r["before"]), "after": _json(r["after"])} for r in rows]


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v
