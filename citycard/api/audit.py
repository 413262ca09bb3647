"""The audit log as the routes write it: an operator's token, or a holder's self-service
login (the SQL is persistence/audit.py)."""

from typing import Any

import asyncpg

from ..persistence import audit as store
from .auth import Operator


async def record(conn: asyncpg.Connection | asyncpg.Pool, who: Operator | str, action: str, subject: str,
                 before: Any = None, after: Any = None, reason: str = "") -> int:
    name, role = (who.name, who.role) if isinstance(who, Operator) else (who, "self_service")
    return await store.record(conn, name, role, action, subject, before, after, reason)
