"""A terminal's ``enabled`` flag: Postgres is the record, Redis tells the gateways at once.

A disable commits in Postgres first, so every later authentication is refused (the session
actor re-reads the flag), and is then published on ``{prefix}:terminals:disabled`` with the
terminal id, so every gateway closes that terminal's open connections now. Pub/sub is fire
and forget: a gateway not subscribed at that moment finds the disable at its next check
(gateway/terminal_control.py). Enabling needs no message: the next authentication reads it.
"""

import json
from collections.abc import Iterable
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from ..keys import disabled_terminals_channel
from . import db

CHECK_CHUNK_IDS = 10_000  # terminal ids per query when gateways check their connections
# (terminal_id, enabled, last_seq, taps, charged_fen, seq_gaps)
TerminalRow = tuple[int, bool, int, int, int, int]


channel = disabled_terminals_channel  # named in citycard/keys.py, shared with the gateway


async def get(conn: asyncpg.Connection, terminal_id: int) -> dict[str, Any] | None:
    """The terminal's row (flag, kind, totals as last flushed by its session), or None."""
    row = await conn.fetchrow(
        "SELECT terminal_id, kind, name, route, enabled, last_seq, taps, charged_fen, seq_gaps, updated_at"
        " FROM terminals WHERE terminal_id = $1", terminal_id)
    return None if row is None else dict(row)


async def journal_totals(conn: asyncpg.Connection, terminal_id: int) -> dict[str, int]:
    """The terminal's totals from the journal itself: exact, unlike the session's running
    counters (which lose what was not flushed when a session actor dies). The journal has no
    index by terminal (none on the hot path), so this scans it: an operator's query, not a
    dashboard's."""
    row = await conn.fetchrow(
        "SELECT count(*) AS journal_taps, count(*) FILTER (WHERE result = 0) AS journal_ok_taps,"
        " coalesce(sum(amount_fen) FILTER (WHERE result = 0), 0) AS journal_charged_fen,"
        " coalesce(max(seq), 0) AS journal_last_seq"
        " FROM journal WHERE terminal_id = $1 AND op_key IS NULL", terminal_id)
    # runs of seqs missing below the highest, as the journal holds them now (a backlog fills them)
    gaps = await conn.fetchval(
        "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (ORDER BY seq) AS prev FROM"
        " (SELECT DISTINCT seq FROM journal WHERE terminal_id = $1 AND op_key IS NULL) s) g"
        " WHERE seq > prev + 1", terminal_id)
    return {k: int(v) for k, v in dict(row).items()} | {"journal_seq_gaps": int(gaps)}


async def set_enabled(
    conn: asyncpg.Connection, terminal_id: int, enabled: bool, *, operator: str, reason: str
) -> bool | None:
    """Set the flag; returns what it was before, None for an unknown terminal. A change is
    written to the audit log in the same transaction; setting it to what it is changes nothing."""
    async with conn.transaction():
        before = await conn.fetchval(
            "SELECT enabled FROM terminals WHERE terminal_id = $1 FOR UPDATE", terminal_id)
        if before is None:
            return None
        if before == enabled:
            return enabled
        # updated_at is left alone: it says when the session last flushed the totals.
        await conn.execute("UPDATE terminals SET enabled = $2 WHERE terminal_id = $1", terminal_id, enabled)
        await conn.execute(
            "INSERT INTO audit_log (operator, role, action, subject, before, after, reason)"
            " VALUES ($1, 'cli', $2, $3, $4::jsonb, $5::jsonb, $6)",
            operator, "terminal.enable" if enabled else "terminal.disable", f"terminal:{terminal_id}",
            json.dumps({"enabled": before}), json.dumps({"enabled": enabled}), reason,
        )
    return bool(before)


async def publish_disabled(redis: aioredis.Redis, prefix: str, terminal_id: int) -> int:
    """Tell the gateways; returns how many subscribers (gateways) heard it."""
    return int(await redis.publish(channel(prefix), str(terminal_id)))


async def disabled_among(conn: asyncpg.Connection | asyncpg.Pool, terminal_ids: Iterable[int]) -> list[int]:
    """Which of these terminals are registered and disabled."""
    ids = sorted(set(terminal_ids))
    out: list[int] = []
    for i in range(0, len(ids), CHECK_CHUNK_IDS):
        chunk = ids[i : i + CHECK_CHUNK_IDS]
        out.extend(r[0] for r in await conn.fetch(
            "SELECT terminal_id FROM terminals WHERE terminal_id = ANY($1::integer[]) AND NOT enabled", chunk))
    return out


class PgSessionStore:
    """What a TerminalSession actor reads and writes: its shard's terminals, one terminal's
    flag at authentication, and the running totals it flushes."""

    def __init__(self, db_url: str, schema: str) -> None:
        self.db_url = db_url
        self.schema = schema
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        old, self._pool = self._pool, await db.create_pool(self.db_url, self.schema, 2)
        if old is not None:
            old.terminate()

    async def load(self, n_shards: int, shard_id: int) -> list[TerminalRow]:
        assert self._pool is not None
        rows = await self._pool.fetch(
            "SELECT terminal_id, enabled, last_seq, taps, charged_fen, seq_gaps FROM terminals"
            " WHERE terminal_id % $1 = $2", n_shards, shard_id)
        return [tuple(r) for r in rows]

    async def enabled(self, terminal_id: int) -> bool | None:
        assert self._pool is not None
        value = await self._pool.fetchval("SELECT enabled FROM terminals WHERE terminal_id = $1", terminal_id)
        return None if value is None else bool(value)

    async def save_totals(self, rows: list[tuple[int, int, int, int, int]]) -> None:
        """(terminal_id, last_seq, taps, charged_fen, seq_gaps) of terminals that changed."""
        assert self._pool is not None
        await self._pool.executemany(
            "UPDATE terminals SET last_seq = $2, taps = $3, charged_fen = $4, seq_gaps = $5,"
            " updated_at = now() WHERE terminal_id = $1", rows)


async def register(conn: asyncpg.Connection, terminal_id: int, kind: int, route: int, name: str, *,
                   operator: str, reason: str) -> dict[str, Any] | None:
    """Register a terminal, with an audit entry. None when it is new; else the row already
    there (the caller says whether it is the same terminal)."""
    async with conn.transaction():
        done = await conn.fetchval(
            "INSERT INTO terminals (terminal_id, kind, route, name) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (terminal_id) DO NOTHING RETURNING terminal_id", terminal_id, kind, route, name)
        if done is None:
            return await get(conn, terminal_id)
        await conn.execute(
            "INSERT INTO audit_log (operator, role, action, subject, before, after, reason)"
            " VALUES ($1, 'cli', 'terminal.register', $2, NULL, $3::jsonb, $4)",
            operator, f"terminal:{terminal_id}", json.dumps({"kind": kind, "route": route, "name": name}), reason)
    return None
