"""Rebuild a shard's ledger from the record: cards, the stored card states, then the journal
tail; and store a snapshot."""

from collections.abc import Sequence
from typing import Any

import asyncpg

from ..domain.cards import CardState
from ..domain.ledger import Ledger
from ..domain.recovery import Rebuild, RecoveryReport
from ..domain.taps import JournalRow
from ..tasks import Pacer
from .journal import JOURNAL_COLUMNS
from .migrate import journal_partition

SNAPSHOT_CHUNK_CARDS = 20_000  # card states a transaction
SNAPSHOT_CHUNK_PAUSE_S = 0.02  # between chunks: the journal's group commits go in between
STATE_COLUMNS = ("shard_id", "card_no", "as_of_lsn", "balance_fen", "state")

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
    cols = ", ".join(JOURNAL_COLUMNS)
    table = journal_partition(shard)
    async with conn.transaction(readonly=True):  # cursors stream: no copy of the whole log at once
        # In lsn order, so each card's newest state comes last; also a first snapshot not yet marked.
        async for card_no, as_of_lsn, state in conn.cursor(
            "SELECT card_no, as_of_lsn, state FROM card_state_log WHERE shard_id = $1 ORDER BY as_of_lsn",
            shard, prefetch=10_000,
        ):
            rebuild.restore_state(card_no, as_of_lsn, state)
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
    """Append the states of the cards changed since the last snapshot, as of ``lsn``, to
    ``card_state_log``, ``chunk_cards`` a transaction, then mark ``lsn`` as this shard's
    snapshot. A card's state is its newest row, which is as of the newest mark or later (a
    snapshot stopped between its chunks; recovery.Rebuild replays a card's rows only past its
    state's lsn), so a stale process's late snapshot never hides a newer state.
    ``total_fen``: the money on these cards."""
    # One upsert of a million cards stopped the journal's commits (issue 17): appended in paced
    # chunks, the journal's commits go between them.
    pacer = Pacer(chunk_pause_s)
    for i in range(0, len(rows), chunk_cards):
        if i:
            await pacer.pause()
        await conn.copy_records_to_table(
            "card_state_log", columns=STATE_COLUMNS,
            records=[(shard_id, card_no, lsn, money, state) for card_no, money, state in rows[i:i + chunk_cards]],
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


async def compact_states(
    conn: asyncpg.Connection, shard_id: int,
    *, chunk_rows: int = SNAPSHOT_CHUNK_CARDS, chunk_pause_s: float = SNAPSHOT_CHUNK_PAUSE_S,
) -> int:
    """Delete the shard's card states that a newer state of the same card supersedes, in chunks
    with a pause between them; returns the rows deleted. A card's newest row is never deleted,
    so a compaction racing a snapshot, or another compaction, loses nothing."""
    # Found in one read into a temporary table (not WAL-logged), so the shard holds none of it:
    # a log of 10 M states may supersede 5 M.
    found = await conn.execute(
        "DROP TABLE IF EXISTS pg_temp.doomed_states;"
        " CREATE TEMP TABLE doomed_states AS SELECT row_number() OVER () AS n, ctid AS row_id, card_no, as_of_lsn"
        " FROM (SELECT ctid, card_no, as_of_lsn, rank() OVER (PARTITION BY card_no ORDER BY as_of_lsn DESC)"
        f" AS newness FROM card_state_log WHERE shard_id = {int(shard_id)}) s WHERE newness > 1"
    )
    doomed = int(found.split()[-1])
    await conn.execute("CREATE INDEX ON pg_temp.doomed_states (n); ANALYZE pg_temp.doomed_states")
    pacer = Pacer(chunk_pause_s)
    deleted = 0
    for first in range(1, doomed + 1, chunk_rows):
        if first > 1:
            await pacer.pause()
        # By row id (a TID scan), checked against the card and lsn: a row moved since
        # (VACUUM FULL) is left for the next compaction, never mistaken for another.
        status = await conn.execute(
            "DELETE FROM card_state_log l USING doomed_states d"
            " WHERE d.n BETWEEN $2 AND $3 AND l.ctid = d.row_id AND l.shard_id = $1"
            " AND l.card_no = d.card_no AND l.as_of_lsn = d.as_of_lsn",
            shard_id, first, first + chunk_rows - 1,
        )
        deleted += int(status.split()[-1])
    # Not in a finally: a cancelled compaction leaves the table to the next one's DROP (or the
    # session's end) rather than wait on a database that may not answer.
    await conn.execute("DROP TABLE IF EXISTS pg_temp.doomed_states")
    return deleted
