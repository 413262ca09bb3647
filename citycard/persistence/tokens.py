"""Operators' API tokens, stored only as hashes."""

import asyncpg


async def insert(conn: asyncpg.Connection, token_hash: bytes, operator: str, roles: list[str]) -> None:
    await conn.execute("INSERT INTO api_tokens (token_hash, operator, roles) VALUES ($1, $2, $3)",
                       token_hash, operator, roles)


async def active(pool: asyncpg.Pool, token_hash: bytes) -> tuple[str, list[str]] | None:
    """(operator, roles) of a token not revoked, or None."""
    row = await pool.fetchrow(
        "SELECT operator, roles FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL", token_hash)
    return None if row is None else (row["operator"], list(row["roles"]))
