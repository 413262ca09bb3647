"""The card_pins table: a PIN's hash, salt and KDF, and its failed tries (the lockout count)."""

from datetime import datetime
from typing import TypeAlias

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"
STATE_COLUMNS = "failed_tries, kdf, updated_at"
# Reserve a try: the one atomic step that bounds evaluated guesses under concurrency. A
# reservation older than _STALE (its process died mid-check) no longer holds the card.
_STALE = "interval '30 seconds'"
_PENDING = f"(CASE WHEN pending_at IS NULL OR pending_at < now() - {_STALE} THEN 0 ELSE pending_tries END)"
_RESERVE = (f"UPDATE card_pins SET pending_tries = {_PENDING} + 1, pending_at = now()"
            f" WHERE card_no = $1 AND failed_tries + {_PENDING} < $2"
            " RETURNING failed_tries, pin_hash, salt, kdf")
# A wrong PIN: its reservation becomes a failure.
_FAILED = ("UPDATE card_pins SET failed_tries = failed_tries + 1, pending_tries = GREATEST(pending_tries - 1, 0)"
           " WHERE card_no = $1 AND pin_hash = $2 RETURNING failed_tries")
# A right PIN: the failures before it are forgiven; reservations of checks still running stay.
_RIGHT = ("UPDATE card_pins SET failed_tries = 0, pending_tries = GREATEST(pending_tries - 1, 0)"
          " WHERE card_no = $1 AND pin_hash = $2")
_REPLACE = ("UPDATE card_pins SET pin_hash = $2, salt = $3, kdf = $4, failed_tries = 0, pending_tries = 0,"
            " pending_at = NULL, updated_at = now()"
            " WHERE card_no = $1 AND pin_hash = $5 RETURNING " + STATE_COLUMNS)


async def exists(conn: Conn, card_no: int) -> bool:
    return bool(await conn.fetchval("SELECT true FROM card_pins WHERE card_no = $1", card_no))


async def state(conn: Conn, card_no: int, *, lock: bool = False) -> asyncpg.Record | None:
    """(failed_tries, kdf, updated_at, pin_hash); ``lock``: FOR UPDATE, in a transaction."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {STATE_COLUMNS}, pin_hash FROM card_pins WHERE card_no = $1{' FOR UPDATE' if lock else ''}",
        card_no)
    return row


async def reserve_try(conn: Conn, card_no: int, max_tries: int) -> asyncpg.Record | None:
    """Reserve a try before the PIN is checked: (failed_tries, pin_hash, salt, kdf), or None
    when there is no PIN, or the failures and the checks in progress leave no try."""
    row: asyncpg.Record | None = await conn.fetchrow(_RESERVE, card_no, max_tries)
    return row


async def settle_wrong(conn: Conn, card_no: int, pin_hash: bytes) -> int | None:
    """The failures after this wrong try; None when the PIN was replaced meanwhile."""
    tries = await conn.fetchval(_FAILED, card_no, pin_hash)
    return None if tries is None else int(tries)


async def settle_right(conn: Conn, card_no: int, pin_hash: bytes) -> None:
    await conn.execute(_RIGHT, card_no, pin_hash)


async def insert(conn: Conn, card_no: int, pin_hash: bytes, salt: bytes, kdf: str) -> asyncpg.Record | None:
    """The first PIN; None when one was set meanwhile."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO card_pins (card_no, pin_hash, salt, kdf) VALUES ($1, $2, $3, $4)"
        f" ON CONFLICT (card_no) DO NOTHING RETURNING {STATE_COLUMNS}", card_no, pin_hash, salt, kdf)
    return row


async def replace(conn: Conn, card_no: int, pin_hash: bytes, salt: bytes, kdf: str,
                  old_hash: bytes) -> asyncpg.Record | None:
    """A new PIN, tries cleared, if the stored one is still ``old_hash`` (else None)."""
    row: asyncpg.Record | None = await conn.fetchrow(_REPLACE, card_no, pin_hash, salt, kdf, old_hash)
    return row


async def rehash(conn: Conn, card_no: int, pin_hash: bytes, salt: bytes, kdf: str, old_hash: bytes) -> bool:
    """The same PIN under new KDF parameters; failed tries kept (a rehash is no reset)."""
    return bool(await conn.fetchval(
        "UPDATE card_pins SET pin_hash = $2, salt = $3, kdf = $4 WHERE card_no = $1 AND pin_hash = $5"
        " RETURNING true", card_no, pin_hash, salt, kdf, old_hash))


def updated_at(row: asyncpg.Record) -> datetime | None:
    value: datetime | None = row["updated_at"]
    return value
