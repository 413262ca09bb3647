"""The holders table: apply, read (with the holder's cards), find by citizen id, correct."""

from datetime import date
from typing import Any, TypeAlias

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"
_COLUMNS = "holder_id, citizen_id, name, birth_date, category, photo_ref"
CORRECTABLE = frozenset({"name", "birth_date", "category", "photo_ref"})


class CitizenIdTaken(Exception):
    """Another holder has this citizen id (the unique index refused the row)."""


async def insert(conn: asyncpg.Connection, citizen_id: str, name: str, birth_date: date, category: int,
                 photo_ref: str) -> asyncpg.Record:
    try:
        row: asyncpg.Record = await conn.fetchrow(
            f"INSERT INTO holders (citizen_id, name, birth_date, category, photo_ref)"
            f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
            citizen_id, name, birth_date, category, photo_ref)
    except asyncpg.UniqueViolationError:
        raise CitizenIdTaken(citizen_id) from None
    return row


async def fetch(conn: Conn, holder_id: int, *, lock: bool = False) -> tuple[asyncpg.Record, list[int]] | None:
    """The holder's row and card numbers (oldest first); ``lock``: FOR UPDATE, in a transaction."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM holders WHERE holder_id = $1"
                              f"{' FOR UPDATE' if lock else ''}", holder_id)
    if row is None:
        return None
    cards = [r[0] for r in await conn.fetch(
        "SELECT card_no FROM cards WHERE holder_id = $1 ORDER BY issued_at", holder_id)]
    return row, cards


async def id_of(conn: Conn, citizen_id: str) -> int | None:
    holder_id: int | None = await conn.fetchval("SELECT holder_id FROM holders WHERE citizen_id = $1", citizen_id)
    return holder_id


async def update(conn: asyncpg.Connection, holder_id: int, changes: dict[str, Any]) -> None:
    """Set the given columns (names from CORRECTABLE only: they are written into the SQL)."""
    if not changes or not set(changes) <= CORRECTABLE:
        raise ValueError(f"not correctable: {sorted(set(changes) - CORRECTABLE)}")
    assignments = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(changes))
    await conn.execute(f"UPDATE holders SET {assignments}, updated_at = now() WHERE holder_id = $1",
                       holder_id, *changes.values())


async def identity_of_card(conn: Conn, card_no: int) -> tuple[str, date] | None:
    """(citizen_id, birth_date) of the card's holder; None for a card with no holder on file."""
    row = await conn.fetchrow("SELECT h.citizen_id, h.birth_date FROM cards c JOIN holders h USING (holder_id)"
                              " WHERE c.card_no = $1", card_no)
    return None if row is None else (row["citizen_id"], row["birth_date"])
