"""The cards table as the card services use it: issuing a card, whose it is, its status row
after a cancellation, the replacement still open on it, and its holder's lock."""

from typing import TypeAlias

import asyncpg

from ..domain.cards import DEFAULT_APPS, CardStatus, make_card_no
from ..domain.shard import shard_of

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


async def holder_of(conn: Conn, card_no: int) -> int | None:
    holder: int | None = await conn.fetchval("SELECT holder_id FROM cards WHERE card_no = $1", card_no)
    return holder


async def lock_holder(conn: asyncpg.Connection, holder_id: int) -> int | None:
    """The holder's category, its row locked for this transaction (None: no such holder)."""
    category: int | None = await conn.fetchval(
        "SELECT category FROM holders WHERE holder_id = $1 FOR UPDATE", holder_id)
    return category


async def live_card_of(conn: Conn, holder_id: int) -> int | None:
    """A card of the holder that is not cancelled, if any."""
    card: int | None = await conn.fetchval(
        "SELECT card_no FROM cards WHERE holder_id = $1 AND status <> $2 LIMIT 1", holder_id,
        int(CardStatus.CANCELLED))
    return card


async def insert_card(conn: asyncpg.Connection, n_shards: int, holder_id: int, category: int,
                      apps: int = int(DEFAULT_APPS), credit_good: bool = True, insurance: str = "",
                      medical_from_purse: bool = False) -> int:
    """A new active card row for a holder, numbered from the card serial; returns its number.
    The caller tells the shard (``ShardClient.add_cards``) once the row is committed."""
    card_no = make_card_no(await conn.fetchval("SELECT nextval('card_serial')"))
    await conn.execute(
        "INSERT INTO cards (card_no, shard_id, category, status, holder_id, apps, credit_good, insurance,"
        " medical_from_purse) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        card_no, shard_of(card_no, n_shards), category, int(CardStatus.ACTIVE), holder_id, apps, credit_good,
        insurance, medical_from_purse)
    return card_no


async def mark_cancelled(conn: Conn, card_no: int) -> None:
    await conn.execute("UPDATE cards SET status = $2 WHERE card_no = $1", card_no, int(CardStatus.CANCELLED))


async def open_replacement_of(conn: Conn, card_no: int) -> int | None:
    """The old card of a replacement not yet finished that involves ``card_no``."""
    old: int | None = await conn.fetchval(
        "SELECT old_card_no FROM replacements WHERE (new_card_no = $1 OR old_card_no = $1) AND state <> 'done'",
        card_no)
    return old


async def hotlisted(conn: Conn, card_no: int) -> bool:
    return bool(await conn.fetchval("SELECT true FROM hotlist WHERE card_no = $1", card_no))
