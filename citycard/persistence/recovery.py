"""Rebuild a shard's ledger from the record: cards, latest snapshot, then the journal tail."""

from dataclasses import dataclass

import asyncpg

from ..domain.cards import CardState
from ..domain.ledger import Ledger
from ..domain.taps import JournalRow
from .journal import JOURNAL_COLUMNS
from .migrate import journal_partition


@dataclass(frozen=True)
class RecoveryReport:
    shard_id: int
    cards: int
    snapshot_lsn: int
    head_lsn: int
    rows_replayed: int  # rows whose effect was applied on top of the snapshot
    rows_remembered: int  # rows read only to refill the dedupe memory
    mismatches: int  # replayed rows whose balance_after disagreed with the rebuilt balance


async def load_ledger(conn: asyncpg.Connection, ledger: Ledger) -> RecoveryReport:
    shard = ledger.shard_id
    snapshot_lsn = await conn.fetchval(
        "SELECT coalesce(max(snapshot_lsn), 0) FROM snapshots WHERE shard_id = $1", shard
    )
    head_lsn = await conn.fetchval("SELECT lsn FROM shard_heads WHERE shard_id = $1", shard) or 0
    for card_no, status, category, opening_fen in await conn.fetch(
        "SELECT card_no, status, category, opening_fen FROM cards WHERE shard_id = $1", shard
    ):
        ledger.add_card(CardState(card_no, status, category, opening_fen))
    if snapshot_lsn:
        cards = ledger.cards
        for card_no, balance_fen in await conn.fetch(
            "SELECT card_no, balance_fen FROM snapshot_cards WHERE shard_id = $1 AND snapshot_lsn = $2",
            shard, snapshot_lsn,
        ):
            card = cards.get(card_no)
            if card is not None:
                card.balance_fen = balance_fen
        ledger.lsn = snapshot_lsn
    start = max(0, min(snapshot_lsn, head_lsn - ledger.dedupe_limit))
    replayed = remembered = mismatches = 0
    cols = ", ".join(JOURNAL_COLUMNS)
    table = journal_partition(shard)
    async with conn.transaction(readonly=True):
        if start:
            # Rows older than the dedupe memory: their seqs must still never be charged again.
            for terminal_id, max_seq in await conn.fetch(
                f"SELECT terminal_id, max(seq) FROM {table} WHERE lsn <= $1 GROUP BY terminal_id", start
            ):
                ledger.raise_watermark(terminal_id, max_seq)
        cursor = conn.cursor(
            f"SELECT {cols} FROM {table} WHERE lsn > $1 ORDER BY lsn", start,
            prefetch=10_000,
        )
        async for rec in cursor:
            row = JournalRow(*rec)
            effect = row.lsn > snapshot_lsn
            ledger.replay(row, apply_effect=effect)
            if effect:
                replayed += 1
                card = ledger.cards.get(row.card_no)
                if card is not None and card.balance_fen != row.balance_after_fen:
                    mismatches += 1
            else:
                remembered += 1
    return RecoveryReport(shard, len(ledger.cards), snapshot_lsn, head_lsn, replayed, remembered, mismatches)


async def write_snapshot(
    conn: asyncpg.Connection, shard_id: int, lsn: int, rows: list[tuple[int, int]]
) -> None:
    """Store (card_no, balance_fen) for every card as of ``lsn``; keep only the newest two."""
    async with conn.transaction():
        await conn.copy_records_to_table(
            "snapshot_cards",
            records=[(shard_id, lsn, card_no, bal) for card_no, bal in rows],
            columns=("shard_id", "snapshot_lsn", "card_no", "balance_fen"),
        )
        await conn.execute(
            "INSERT INTO snapshots (shard_id, snapshot_lsn, cards, balance_fen) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            shard_id, lsn, len(rows), sum(b for _, b in rows),
        )
        keep = await conn.fetchval(
            "SELECT min(snapshot_lsn) FROM (SELECT snapshot_lsn FROM snapshots WHERE shard_id = $1"
            " ORDER BY snapshot_lsn DESC LIMIT 2) s",
            shard_id,
        )
        await conn.execute("DELETE FROM snapshots WHERE shard_id = $1 AND snapshot_lsn < $2", shard_id, keep)
        await conn.execute("DELETE FROM snapshot_cards WHERE shard_id = $1 AND snapshot_lsn < $2", shard_id, keep)
