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
