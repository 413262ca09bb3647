"""The acquirer's remote-tap log, group-committed (interop/journal.py), on real Postgres:
rows that wait together go in one commit, each caller returns once its row is durable (seen
from another connection), a failed batch fails its callers only, the queue is bounded."""

import asyncio

import pytest

from citycard.cli.services import migrate_db
from citycard.interop import journal
from citycard.interop.store import LinkTap
from citycard.persistence import db
from tests.support.services import ServiceUrls, make_settings

pytestmark = pytest.mark.services


def _tap(seq: int, terminal_id: int = 7) -> LinkTap:
    return LinkTap("C02", terminal_id, seq, 900102 * 10**11 + seq, 1, 5, 1_700_000_000_000 + seq, 200)


async def _count(url: str, schema: str) -> int:
    conn = await db.connect(url, schema)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM remote_taps"))
    finally:
        await conn.close()


def test_rows_waiting_together_share_one_commit(configured_services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        url = configured_services.db_url
        await migrate_db(make_settings(configured_services, schema), url)
        pool = await db.create_pool(url, schema, 2)
        try:
            j = journal.journal_of(pool)
            await asyncio.gather(*(journal.log_remote_tap(pool, _tap(s), 0, 200, 1000 - s, False, 1)
                                   for s in range(1, 201)))
            assert await _count(url, schema) == 200  # durable: another connection sees every row
            # the first row goes alone (no linger), the 199 that queued behind it in one or two more
            assert j.rows == 200 and j.commits <= 3, (j.commits, j.rows)
            assert id(pool) not in journal._journals  # idle: the writer was let go

            # a retry keeps the first row, in the same batch or a later one
            await asyncio.gather(journal.log_remote_tap(pool, _tap(1), 5, 0, -1, True, 2),
                                 journal.log_remote_tap(pool, _tap(201), 0, 200, 1, False, 2),
                                 journal.log_remote_tap(pool, _tap(201), 5, 0, -1, True, 3))
            rows = await pool.fetch("SELECT seq, result, replay FROM remote_taps WHERE seq IN (1, 201) ORDER BY seq")
            assert [tuple(r) for r in rows] == [(1, 0, False), (201, 0, False)]
        finally:
            await pool.close()

    asyncio.run(run())


def test_a_failed_batch_fails_its_callers_and_the_next_goes_on(configured_services: ServiceUrls,
                                                                schema: str) -> None:
    async def run() -> None:
        url = configured_services.db_url
        await migrate_db(make_settings(configured_services, schema), url)
        pool = await db.create_pool(url, schema, 2)
        try:
            j = journal.journal_of(pool)
            j.max_batch_rows = 2
            bad = journal.log_remote_tap(pool, _tap(2), 0, -1, 0, False, 1)  # fare_fen < 0: the CHECK refuses
            got = await asyncio.gather(journal.log_remote_tap(pool, _tap(1), 0, 200, 0, False, 1), bad,
                                       journal.log_remote_tap(pool, _tap(3), 0, 200, 0, False, 1),
                                       return_exceptions=True)
            # all three queue before the writer runs: batches [1, 2] and [3]; the first fails whole
            assert isinstance(got[0], Exception) and isinstance(got[1], Exception) and got[2] is None, got
            assert await _count(url, schema) == 1
            await journal.log_remote_tap(pool, _tap(1), 0, 200, 0, False, 1)  # the retry goes in
            assert await _count(url, schema) == 2
        finally:
            await pool.close()

    asyncio.run(run())


def test_the_queue_is_bounded(configured_services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        url = configured_services.db_url
        await migrate_db(make_settings(configured_services, schema), url)
        pool = await db.create_pool(url, schema, 2)
        try:
            j = journal.journal_of(pool)
            j.max_queued_rows = 3
            waiting = [asyncio.ensure_future(journal.log_remote_tap(pool, _tap(s), 0, 200, 0, False, 1))
                       for s in range(1, 4)]
            await asyncio.sleep(0)  # the three are queued, the writer has not run yet
            with pytest.raises(journal.JournalFull):
                await journal.log_remote_tap(pool, _tap(4), 0, 200, 0, False, 1)
            await asyncio.gather(*waiting)
            assert await _count(url, schema) == 3
        finally:
            await pool.close()

    asyncio.run(run())
