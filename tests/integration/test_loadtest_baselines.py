"""The load lab's baselines on real Postgres: the naive SQL ledger keeps the money right and
writes one row per tap; the raw COPY rate copies the platform's own journal rows once each."""

import asyncio

import asyncpg
import pytest

from citycard.actors.journal_writer import JournalWriter
from citycard.domain.cards import make_card_no
from citycard.domain.results import Result
from citycard.domain.taps import JournalRow, TapKind
from citycard.loadtest.baselines import (
    INSUFFICIENT_FUNDS,
    OK,
    CopyResult,
    naive_sql_ledger,
    raw_copy_rate,
)
from citycard.persistence.db import connect
from citycard.persistence.journal import pg_append
from citycard.persistence.migrate import migrate
from tests.support.services import ServiceUrls

pytestmark = pytest.mark.services

SHARDS = 2
T0_MS = 1_760_000_000_000
TIMEOUT_S = 30.0


async def _ledger_totals(db_url: str, schema: str) -> tuple[int, int, int, int, int, int]:
    """(accounts, balances, charged, rows, distinct (terminal, seq), negative balances)."""
    conn = await connect(db_url, schema)
    try:
        accounts, balances, negative = await conn.fetchrow(
            "SELECT count(*), sum(balance_fen), count(*) FILTER (WHERE balance_fen < 0) FROM accounts"
        )
        charged, rows, distinct = await conn.fetchrow(
            "SELECT coalesce(sum(fare_fen) FILTER (WHERE code = $1), 0), count(*),"
            " count(DISTINCT (terminal_id, seq)) FROM journal",
            OK,
        )
        return accounts, int(balances), int(charged), rows, distinct, negative
    finally:
        await conn.close()


def test_naive_ledger_conserves_money_one_row_per_tap(configured_services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        db = configured_services.db_url
        result = await naive_sql_ledger(db, schema=schema, n_cards=2_000, n_taps=2_000, connections=4,
                                        keep_schema=True)
        assert result.taps == 2_000 and result.connections == 4 and result.insufficient == 0
        assert result.elapsed_s > 0 and result.taps_per_s > 0
        accounts, balances, charged, rows, distinct, negative = await _ledger_totals(db, schema)
        assert accounts == 2_000 and negative == 0
        assert balances + charged == 2_000 * 10_000
        assert 2_000 * 100 <= charged <= 2_000 * 500
        assert rows == distinct == 2_000

    asyncio.run(run())


def test_naive_ledger_refuses_without_funds(configured_services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        db = configured_services.db_url
        result = await naive_sql_ledger(db, schema=schema, n_cards=40, n_taps=600, connections=3,
                                        opening_fen=1_000, keep_schema=True)
        assert result.taps == 600 and 0 < result.insufficient < 600
        accounts, balances, charged, rows, distinct, negative = await _ledger_totals(db, schema)
        assert accounts == 40 and negative == 0
        assert balances + charged == 40 * 1_000
        assert rows == distinct == 600
        conn = await connect(db, schema)
        try:
            refused = await conn.fetchrow(
                "SELECT count(*), count(balance_after_fen) FROM journal WHERE code = $1", INSUFFICIENT_FUNDS
            )
            assert tuple(refused) == (result.insufficient, 0)
        finally:
            await conn.close()

    asyncio.run(run())


def test_naive_ledger_stops_at_the_time_limit_and_drops_its_schema(
    configured_services: ServiceUrls, schema: str
) -> None:
    async def run() -> None:
        db = configured_services.db_url
        result = await naive_sql_ledger(db, schema=schema, n_cards=100, n_taps=1_000, time_limit_s=0.0)
        assert result.taps == 0 and result.taps_per_s == 0.0
        assert not await _schema_exists(db, schema)

    asyncio.run(run())


# -- raw COPY -------------------------------------------------------------------------------------

def _rows(shard: int, n: int) -> list[JournalRow]:
    """n journal rows of one shard, lsn 1..n; every 10th is a card-service op with its key."""
    out = []
    for lsn in range(1, n + 1):
        op = lsn % 10 == 0
        out.append(JournalRow(
            lsn, 3000 + shard, lsn, make_card_no(10 * lsn + shard), 100 if op else int(TapKind.BUS), 7,
            T0_MS + lsn, T0_MS + 5 + lsn, int(Result.OK), -500 if op else 182, 100_000 - lsn,
            d_epurse=500 if op else -182,
            op_key=f"topup:{shard}:{lsn}" if op else None, op=b"\x92\x01\x02" if op else None,
        ))
    return out


async def _source(db_url: str, schema: str, per_shard: int) -> None:
    """A migrated schema whose journal the platform's writer filled, ``per_shard`` rows a shard."""
    admin = await connect(db_url, schema)
    try:
        await migrate(admin, schema, SHARDS)
    finally:
        await admin.close()
    for shard in range(SHARDS):
        wconn = await connect(db_url, schema)
        writer = JournalWriter(pg_append(wconn, shard, schema), max_rows=500)
        writer.start()
        try:
            rows = _rows(shard, per_shard)
            await asyncio.wait_for(
                asyncio.gather(*(writer.submit(rows[i:i + 300]) for i in range(0, len(rows), 300))), TIMEOUT_S
            )
            assert writer.broken is None
        finally:
            await writer.close()
            await wconn.close()


async def _schema_exists(db_url: str, schema: str) -> bool:
    conn = await asyncpg.connect(db_url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema))
    finally:
        await conn.close()


def test_raw_copy_copies_every_available_row_once(configured_services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        db = configured_services.db_url
        scratch = f"{schema}_copy"
        await _source(db, schema, 1_600)  # 3,200 rows, 320 of them with a unique op key
        result = await raw_copy_rate(db, schema, n_rows=10_000, commit_rows=1_000, scratch_schema=scratch)
        assert result.rows == 3_200 and result.commit_rows == 1_000
        assert result.elapsed_s > 0 and result.rows_per_s > 0
        assert not await _schema_exists(db, scratch)

        capped = await raw_copy_rate(db, schema, n_rows=2_500, commit_rows=20_000, scratch_schema=scratch)
        assert capped == CopyResult(2_500, capped.elapsed_s, 20_000)
        assert not await _schema_exists(db, scratch)
        conn = await connect(db, schema)
        try:
            assert await conn.fetchval("SELECT count(*) FROM journal") == 3_200  # source untouched
        finally:
            await conn.close()

    asyncio.run(run())


def test_raw_copy_needs_a_thousand_rows(configured_services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        db = configured_services.db_url
        scratch = f"{schema}_copy"
        await _source(db, schema, 450)
        with pytest.raises(ValueError, match="900 rows"):
            await raw_copy_rate(db, schema, scratch_schema=scratch)
        assert not await _schema_exists(db, scratch)
        with pytest.raises(ValueError, match="n_rows"):
            await raw_copy_rate(db, schema, n_rows=999, scratch_schema=scratch)

    asyncio.run(run())
