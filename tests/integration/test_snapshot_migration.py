"""Migration 0014 on a database that holds full snapshots (snapshot_cards, before issue 17):
each shard's newest snapshot becomes its card_states, and older marks go."""

import asyncio

from citycard.domain.cards import CardState, encode_card
from citycard.persistence import db
from citycard.persistence.migrate import migrate, migration_files
from tests.support.migrations import migrated_by_hand


def test_the_newest_full_snapshot_becomes_the_card_states(configured_services, schema):
    old_card = CardState(1001, 0, 0, 500)
    new_card = CardState(1001, 0, 0, 318)
    other = CardState(2002, 0, 0, 77)

    async def scenario() -> None:
        conn = await db.connect(configured_services.db_url, schema)
        try:
            await migrated_by_hand(conn, schema, 13)
            for shard, lsn, card in [(0, 10, old_card), (0, 20, new_card), (1, 7, other)]:
                await conn.execute("INSERT INTO snapshots (shard_id, snapshot_lsn, cards, balance_fen)"
                                   " VALUES ($1, $2, 1, $3)", shard, lsn, card.total_fen())
                await conn.execute("INSERT INTO snapshot_cards (shard_id, snapshot_lsn, card_no, balance_fen, state)"
                                   " VALUES ($1, $2, $3, $4, $5)", shard, lsn, card.card_no, card.total_fen(),
                                   encode_card(card))
            assert await migrate(conn, schema, 2) == [name for version, name, _ in migration_files() if version >= 14]
            states = [tuple(r) for r in await conn.fetch(
                "SELECT shard_id, card_no, as_of_lsn, balance_fen, state FROM card_states ORDER BY 1, 2")]
            assert states == [(0, 1001, 20, 318, encode_card(new_card)), (1, 2002, 7, 77, encode_card(other))]
            marks = [tuple(r) for r in await conn.fetch("SELECT shard_id, snapshot_lsn FROM snapshots ORDER BY 1")]
            assert marks == [(0, 20), (1, 7)]
            assert await conn.fetchval("SELECT to_regclass('snapshot_cards')") is None
        finally:
            await conn.close()

    asyncio.run(scenario())
