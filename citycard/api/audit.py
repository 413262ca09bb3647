"""The append-only audit log: who, what, when, before and after (Postgres refuses changes)."""

import json
from typing import Any

import asyncpg

from .auth import Operator


async def record(conn: asyncpg.Connection | asyncpg.Pool, who: Operator | str, action: str, subject: str,
                 before: Any = None, after: Any = None, reason: str = "") -> int:
    name, role = (who.name, who.role) if isinstance(who, Operator) else (who, "self_service")
    return int(await conn.fetchval(
        "INSERT INTO audit_log (operator, role, action, subject, before, after, reason)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7) RETURNING audit_id",
        name, role, action, subject,
        None if before is None else json.dumps(before, default=str),
        None if after is None else json.dumps(after, default=str), reason,
    ))
