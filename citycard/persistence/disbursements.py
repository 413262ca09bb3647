"""A disbursement run's SQL: its items made (one per holder of the list, the card fixed), read
page by page, and their shards' results recorded in bulk with the run's counters."""

import asyncpg

from .programmes import ANALYZE_AFTER_ROWS, Conn

PREPARE_WORK_MEM = "64MB"  # making a million items sorts them once
# pg advisory lock keys of runs: one runner per run across API processes
_LOCK_BASE = 0x0D15B << 40

# Beneficiaries not yet in this period get an item, with the holder's newest live card fixed
# now; existing items keep theirs, which is what makes a resend land on the same shard. A hash
# join and one sort (an index probe per holder took 8 s for a million); the items go in in
# holder order, the order the run reads them. No ON CONFLICT: the run's advisory lock and NOT
# EXISTS leave no existing key, speculative insertion doubled the insert (4.2 s against 2.0 s),
# and a conflict would fail the run, never replace an item's card.
_MAKE_ITEMS = """
WITH made AS (
    INSERT INTO disbursement_items (programme_id, period, holder_id, card_no, shard_id, amount_fen, state)
    SELECT DISTINCT ON (b.holder_id) b.programme_id, $2, b.holder_id, c.card_no, c.shard_id,
           coalesce(b.amount_fen, $3), CASE WHEN c.card_no IS NULL THEN 2 ELSE 0 END
    FROM programme_beneficiaries b
    LEFT JOIN cards c ON c.holder_id = b.holder_id AND c.status <> 2
    WHERE b.programme_id = $1
      AND NOT EXISTS (SELECT 1 FROM disbursement_items i
                      WHERE i.programme_id = $1 AND i.period = $2 AND i.holder_id = b.holder_id)
    ORDER BY b.holder_id, c.issued_at DESC, c.card_no DESC
    RETURNING state)
UPDATE disbursement_runs SET total = total + (SELECT count(*) FROM made),
       refused = refused + (SELECT count(*) FROM made WHERE state = 2),
       resumed_done = credited + refused + (SELECT count(*) FROM made WHERE state = 2),
       resumed_at = now(), updated_at = now()
WHERE run_id = $4
RETURNING (SELECT count(*) FROM made)
"""

# A resumed run's counters are made again from its items (they move together, so this only
# heals what an operator changed by hand).
_RECOUNT = """
UPDATE disbursement_runs r SET total = c.total, credited = c.credited, refused = c.refused,
       credited_fen = c.credited_fen, resumed_done = c.credited + c.refused,
       resumed_at = now(), updated_at = now()
FROM (SELECT count(*) AS total, count(*) FILTER (WHERE state = 1) AS credited,
             count(*) FILTER (WHERE state = 2) AS refused,
             coalesce(sum(amount_fen) FILTER (WHERE state = 1), 0) AS credited_fen
      FROM disbursement_items WHERE programme_id = $2 AND period = $3) c
WHERE r.run_id = $1
"""

# The next page of pending items, as one row of arrays per shard (no Python loop per item).
_PAGE = """
SELECT shard_id, array_agg(holder_id ORDER BY holder_id), array_agg(card_no ORDER BY holder_id),
       array_agg(amount_fen ORDER BY holder_id), max(holder_id)
FROM (SELECT holder_id, card_no, shard_id, amount_fen FROM disbursement_items
      WHERE programme_id = $1 AND period = $2 AND holder_id > $3 AND state = 0
      ORDER BY holder_id LIMIT $4) p
GROUP BY shard_id
"""

# Only items still pending change (a result is never overwritten), and the run's counters
# move in the same statement by exactly the rows that changed.
_RECORD = """
WITH u AS (
    UPDATE disbursement_items i SET state = CASE WHEN r.result = 0 THEN 1 ELSE 2 END, result = r.result
    FROM unnest($3::bigint[], $4::smallint[]) AS r(holder_id, result)
    WHERE i.programme_id = $1 AND i.period = $2 AND i.holder_id = r.holder_id AND i.state = 0
    RETURNING i.state, i.amount_fen)
UPDATE disbursement_runs SET
    credited = credited + (SELECT count(*) FROM u WHERE state = 1),
    refused = refused + (SELECT count(*) FROM u WHERE state = 2),
    credited_fen = credited_fen + (SELECT coalesce(sum(amount_fen), 0) FROM u WHERE state = 1),
    updated_at = now()
WHERE run_id = $5
"""



async def lock_run(conn: asyncpg.Connection, run_id: int) -> bool:
    """The run's advisory lock, held for the connection's life (released by the pool's reset
    or a dead session); False: another process holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_BASE + run_id))


async def prepare_items(conn: asyncpg.Connection, run_id: int, programme_id: int, period: str, amount_fen: int,
                        resumed: bool) -> int:
    """Make the period's missing items (counted into the run), ``amount_fen`` where the list
    gives none; a resumed run's counters are made again. Returns how many were made."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL work_mem = '{PREPARE_WORK_MEM}'")  # the sort in memory, not on disk
        made = int(await conn.fetchval(_MAKE_ITEMS, programme_id, period, amount_fen, run_id))
        if resumed:
            await conn.execute(_RECOUNT, run_id, programme_id, period)
    if made >= ANALYZE_AFTER_ROWS:
        # Without fresh statistics the planner takes the new items for a handful and joins
        # each recorded batch to all of them: quadratic (a 200,000 run took minutes).
        await conn.execute("ANALYZE disbursement_items")
    return made


async def pending_page(conn: Conn, programme_id: int, period: str, after_holder: int,
                       limit: int) -> list[asyncpg.Record]:
    """The next ``limit`` pending items after ``after_holder``, as one row per shard:
    (shard_id, holder ids, card numbers, amounts, the last holder id)."""
    return list(await conn.fetch(_PAGE, programme_id, period, after_holder, limit))


async def record_results(conn: asyncpg.Connection, run_id: int, programme_id: int, period: str, holders: list[int],
                         results: list[int]) -> None:
    """The shards' results of these holders' items (pending ones only), counted into the run."""
    await conn.execute(_RECORD, programme_id, period, holders, results, run_id)
