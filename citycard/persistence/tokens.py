"""Operators' API tokens, stored only as hashes; named to operators by the start of the hash."""

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

TOKEN_ID_HEX = 12  # hex digits of the hash that name a token (api/auth.py token_id)


async def insert(conn: asyncpg.Connection, token_hash: bytes, operator: str, roles: list[str]) -> None:
    await conn.execute("INSERT INTO api_tokens (token_hash, operator, roles) VALUES ($1, $2, $3)",
                       token_hash, operator, roles)


async def active(pool: asyncpg.Pool, token_hash: bytes) -> tuple[str, list[str]] | None:
    """(operator, roles) of a token not revoked, or None."""
    row = await pool.fetchrow(
        "SELECT operator, roles FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL", token_hash)
    return None if row is None else (row["operator"], list(row["roles"]))


@dataclass(frozen=True)
class TokenRow:
    token_id: str  # the start of the hash, as operators see it
    operator: str
    roles: list[str]
    created_at: datetime
    revoked_at: datetime | None


class Revoke(StrEnum):
    REVOKED = "revoked"
    ALREADY = "already revoked"
    UNKNOWN = "unknown"
    AMBIGUOUS = "ambiguous"


_COLUMNS = "token_hash, operator, roles, created_at, revoked_at"


def _row(r: asyncpg.Record) -> TokenRow:
    return TokenRow(r["token_hash"].hex()[:TOKEN_ID_HEX], r["operator"], list(r["roles"]), r["created_at"],
                    r["revoked_at"])


async def listed(conn: asyncpg.Connection) -> list[TokenRow]:
    """Every token, oldest first, revoked ones included."""
    return [_row(r) for r in await conn.fetch(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY token_id")]


async def revoke(conn: asyncpg.Connection, id_prefix: str, *, operator: str, reason: str) -> tuple[Revoke, list[TokenRow]]:
    """Revoke the one token whose id starts with ``id_prefix`` (lower-case hex), writing an audit
    entry in the same transaction. Returns the outcome and the tokens the prefix matched; a
    token revoked already is left as it is, with no second entry."""
    async with conn.transaction():
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE encode(token_hash, 'hex') LIKE $1 || '%'"
            " ORDER BY token_id LIMIT 10 FOR UPDATE", id_prefix)
        found = [_row(r) for r in rows]
        if not found:
            return Revoke.UNKNOWN, found
        if len(found) > 1:
            return Revoke.AMBIGUOUS, found
        if found[0].revoked_at is not None:
            return Revoke.ALREADY, found
        revoked_at = await conn.fetchval(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1 RETURNING revoked_at", rows[0]["token_hash"])
        t = found[0]
        await conn.execute(
            "INSERT INTO audit_log (operator, role, action, subject, before, after, reason)"
            " VALUES ($1, 'cli', 'token.revoke', $2, $3::jsonb, $4::jsonb, $5)",
            operator, f"token:{t.token_id}",
            json.dumps({"operator": t.operator, "roles": t.roles, "revoked_at": None}),
            json.dumps({"operator": t.operator, "roles": t.roles, "revoked_at": revoked_at.isoformat()}), reason)
        return Revoke.REVOKED, [TokenRow(t.token_id, t.operator, t.roles, t.created_at, revoked_at)]
