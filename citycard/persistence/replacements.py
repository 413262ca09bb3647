"""The replacements table: how far each card replacement got, so a retry resumes it."""

from typing import Any, TypeAlias

import asyncpg

from ..domain.cards import CardStatus

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


async def fetch(conn: Conn, old_card_no: int) -> asyncpg.Record | None:
    """(new_card_no, state, moved) of the replacement of ``old_card_no``."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT new_card_no, state, moved FROM replacements WHERE old_card_no = $1", old_card_no)
    return row


async def lock_card(conn: asyncpg.Connection, card_no: int) -> asyncpg.Record | None:
    """(holder_id, category) of the card, its row locked: concurrent replacements take turns."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT holder_id, category FROM cards WHERE card_no = $1 FOR UPDATE", card_no)
    return row


async def receiving(conn: Conn, card_no: int) -> int | None:
    """The old card of an unfinished replacement whose new card is ``card_no``."""
    old: int | None = await conn.fetchval(
        "SELECT old_card_no FROM replacements WHERE new_card_no = $1 AND state <> 'done'", card_no)
    return old


async def insert(conn: asyncpg.Connection, old_card_no: int, new_card_no: int, reason: str) -> None:
    await conn.execute(
        "INSERT INTO replacements (old_card_no, new_card_no, state, reason) VALUES ($1, $2, 'started', $3)",
        old_card_no, new_card_no, reason)


async def moved_out(conn: Conn, old_card_no: int, moved: bytes) -> None:
    await conn.execute(
        "UPDATE replacements SET state = 'moved_out', moved = $2 WHERE old_card_no = $1 AND state = 'started'",
        old_card_no, moved)


async def retire_card(conn: asyncpg.Connection, card_no: int) -> None:
    await conn.execute("UPDATE cards SET status = $2 WHERE card_no = $1 AND status <> $2",
                       card_no, int(CardStatus.CANCELLED))


async def finish(conn: asyncpg.Connection, old_card_no: int, new_card_no: int) -> bool:
    """Mark it done; True for the one call that did (it also carries the holder's PIN over:
    the hash is not tied to the card number)."""
    flipped: Any = await conn.fetchval(
        "UPDATE replacements SET state = 'done', moved = NULL, done_at = now()"
        " WHERE old_card_no = $1 AND state <> 'done' RETURNING 1", old_card_no)
    if flipped:
        await conn.execute(
            "INSERT INTO card_pins (card_no, pin_hash, salt, kdf, failed_tries)"
            " SELECT $2, pin_hash, salt, kdf, failed_tries FROM card_pins WHERE card_no = $1"
            " ON CONFLICT (card_no) DO NOTHING", old_card_no, new_card_no)
    return bool(flipped)
