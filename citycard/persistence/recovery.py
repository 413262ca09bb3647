"""Rebuild a shard's ledger from the record: cards, the stored card states, then the journal
tail; and store a snapshot."""

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from ..domain.cards import CardState
from ..domain.ledger import Ledger
from ..domain.recovery import Rebuild, RecoveryReport
from ..domain.taps import JournalRow
from .journal import JOURNAL_COLUMNS
from .migrate import journal_partition

SNAPSHOT_CHUNK_CARDS = 20_000  # card states a transaction
SNAPSHOT_CHUNK_PAUSE_S = 0.02  # between chunks: the journal's group commits go in between

CARD_COLUMNS = (
    "card_no, status, category, opening_fen, opening_general_fen, opening_voucher_fen,"
    " opening_allowance_fen, opening_medical_fen, apps, credit_good, insurance, medical_from_purse,"
    " monthly_pass_from, monthly_pass_until, park_pass_from, park_pass_until, voucher_until_ms,"
    " voucher_categories, allowance_until_ms"
)


def card_from_record(r: Sequence[Any]) -> CardState:
    """A card as the cards table holds it (opening purses, products, applications)."""
    (card_no, status, category, o_epurse, o_general, o_voucher, o_allowance, o_medical, apps, credit_good,
     insurance, medical_from_purse, mp_from, mp_until, pp_from, pp_until, voucher_until, voucher_cats,
     allowance_until) = r
    return CardState(
        card_no, status, category, o_epurse,
        purses=[o_epurse, o_general, o_voucher, o_allowance, o_medical, 0],
        apps=apps, credit_good=credit_good, insurance=insurance, medical_from_purse=medical_from_purse,
        monthly_pass=(mp_from, mp_until) if mp_from is not None and mp_until is not None else None,
        park_pass=(pp_from, pp_until) if pp_from is not None and pp_until is not None else None,
        voucher_until_ms=voucher_until, voucher_categories=frozenset(voucher_cats or ()),
        allowance_until_ms=allowance_until,
    )


async def load_ledger(conn: asyncpg.Connection, ledger: Ledger) -> RecoveryReport:
    shard = ledger.shard_id
    snapshot_lsn = await conn.fetchval(
        "SELECT coalesce(max(snapshot_lsn), 0) FROM snapshots WHERE shard_id = $1", shard
    )
    head_lsn = await conn.fetchval("SELECT lsn FROM shard_heads WHERE shard_id = $1", shard) or 0
    rebuild = Rebuild(ledger, snapshot_lsn, head_lsn)
    rebuild.add_cards(card_from_record(rec) for rec in await conn.fetch(
        f"SELECT {CARD_COLUMNS} FROM cards WHERE shard_id = $1", shard))
    rebuild.restore_snapshot(await conn.fetch(  # also states of a first snapshot not yet marked
        "SELECT card_no, as_of_lsn, state FROM card_states WHERE shard_id = $1", shard,
    ))
    cols = ", ".join(JOURNAL_COLUMNS)
    table = journal_partition(shard)
    async with conn.transaction(readonly=True):
        if rebuild.start:
            rebuild.watermarks(await conn.fetch(
                f"SELECT terminal_id, max(seq) FROM {table} WHERE lsn <= $1 GROUP BY terminal_id", rebuild.start
            ))
        cursor = conn.cursor(
            f"SELECT {cols} FROM {table} WHERE lsn > $1 ORDER BY lsn", rebuild.start,
            prefetch=10_000,
        )
        async for rec in cursor:
            rebuild.row(JournalRow(*rec))
    return rebuild.report()


async def write_snapshot(
    conn: asyncpg.Connection, shard_id: int, lsn: int, rows: list[tuple[int, int, bytes]], total_fen: int,
    *, chunk_cards: int = SNAPSHOT_CHUNK_CARDS, chunk_pause_s: float = SNAPSHOT_CHUNK_PAUSE_S,
) -> None:
    """Store the states of the cards changed since the last snapshot, as of ``lsn``, over their
    older ones, ``chunk_cards`` a transaction, then mark ``lsn`` as this shard's snapshot.
    ``card_states`` then holds every card's state as of the newest mark or later (a snapshot
    stopped between its chunks; recovery.Rebuild replays a card's rows only past its state's
    lsn). A state is never replaced by an older one (a stale process's late snapshot).
    ``total_fen``: the money on these cards."""
    for i in range(0, len(rows), chunk_cards):
        # One upsert of a million cards made a journal commit wait past its timeout (issue 17):
        # in chunks, with a pause, the journal's commits go between them.
        if i:
            await asyncio.sleep(chunk_pause_s)
        part = rows[i:i + chunk_cards]
        await conn.execute(
            "INSERT INTO card_states (shard_id, card_no, as_of_lsn, balance_fen, state)"
            " SELECT $1, * FROM unnest($3::bigint[], $2::bigint[], $4::bigint[], $5::bytea[])"
            " ON CONFLICT (shard_id, card_no) DO UPDATE SET as_of_lsn = EXCLUDED.as_of_lsn,"
            " balance_fen = EXCLUDED.balance_fen, state = EXCLUDED.state"
            " WHERE card_states.as_of_lsn <= EXCLUDED.as_of_lsn",
            shard_id, [lsn] * len(part), [r[0] for r in part], [r[1] for r in part], [r[2] for r in part],
        )
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO snapshots (shard_id, snapshot_lsn, cards, balance_fen) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            shard_id, lsn, len(rows), total_fen,
        )
        await conn.execute(
            "DELETE FROM snapshots WHERE shard_id = $1"
            " AND snapshot_lsn < (SELECT max(snapshot_lsn) FROM snapshots WHERE shard_id = $1)", shard_id
        )
