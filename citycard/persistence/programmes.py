"""Disbursement programmes and their runs as Postgres records them: the programme, its runs'
rows (state, counters), and the report's groups and refused items. The runner's own SQL is
``disbursements.py``; beneficiary uploads are ``programme_uploads.py``."""

from typing import TypeAlias

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

ANALYZE_AFTER_ROWS = 10_000  # rows added at once after which the planner needs new statistics


# -- programmes ------------------------------------------------------------------------------

async def insert_programme(conn: Conn, name: str, kind: str, purse: int, amount_fen: int, until_ms: int,
                           categories: list[str], created_by: str) -> int:
    return int(await conn.fetchval(
        "INSERT INTO programmes (name, kind, purse, amount_fen, until_ms, merchant_categories, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING programme_id",
        name, kind, purse, amount_fen, until_ms, categories, created_by))


async def programme(conn: Conn, programme_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM programmes WHERE programme_id = $1", programme_id)


async def run_briefs(conn: Conn, programme_id: int) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT run_id, period, state FROM disbursement_runs WHERE programme_id = $1"
                                 " ORDER BY run_id", programme_id))


# -- runs ------------------------------------------------------------------------------------

async def run_id_of(conn: Conn, programme_id: int, period: str) -> int | None:
    run_id = await conn.fetchval("SELECT run_id FROM disbursement_runs WHERE programme_id = $1 AND period = $2",
                                 programme_id, period)
    return None if run_id is None else int(run_id)


async def open_run(conn: Conn, programme_id: int, period: str) -> int:
    """The period's run, made or set running again; its id."""
    return int(await conn.fetchval(
        "INSERT INTO disbursement_runs (programme_id, period, state) VALUES ($1, $2, 'running')"
        " ON CONFLICT (programme_id, period) DO UPDATE SET state = 'running', error = '',"
        " finished_at = NULL, updated_at = now() RETURNING run_id", programme_id, period))


async def run(conn: Conn, run_id: int) -> asyncpg.Record | None:
    """The run's row, with ``session_s``: seconds since its latest (re)start, up to now while
    it runs, else up to its last change."""
    return await conn.fetchrow(
        "SELECT *, extract(epoch FROM (CASE WHEN state = 'running' THEN now() ELSE updated_at END) - resumed_at)"
        " AS session_s FROM disbursement_runs WHERE run_id = $1", run_id)


async def finish_run(conn: Conn, run_id: int, state: str, error: str) -> None:
    await conn.execute(
        "UPDATE disbursement_runs SET state = $2, error = $3, updated_at = now(),"
        " finished_at = CASE WHEN $2 = 'done' THEN now() END WHERE run_id = $1",
        run_id, state, error)


async def running_runs(conn: Conn) -> list[asyncpg.Record]:
    """Runs the record says are running, with their programme's terms."""
    return list(await conn.fetch(
        "SELECT r.run_id, r.period, p.programme_id, p.purse, p.amount_fen, p.until_ms, p.merchant_categories"
        " FROM disbursement_runs r JOIN programmes p USING (programme_id) WHERE r.state = 'running'"
        " ORDER BY r.run_id"))


async def report_groups(conn: Conn, programme_id: int, period: str) -> list[asyncpg.Record]:
    """The period's items by (state, result): ``n`` items, ``fen``."""
    return list(await conn.fetch(
        "SELECT state, result, count(*) AS n, sum(amount_fen) AS fen FROM disbursement_items"
        " WHERE programme_id = $1 AND period = $2 GROUP BY state, result ORDER BY state, result",
        programme_id, period))


async def items_in_state(conn: Conn, programme_id: int, period: str, state: int, after_holder: int,
                         limit: int) -> list[asyncpg.Record]:
    """A page of the period's items in ``state``, by holder, with the holder's citizen id."""
    return list(await conn.fetch(
        "SELECT i.holder_id, h.citizen_id, i.card_no, i.amount_fen, i.result FROM disbursement_items i"
        " JOIN holders h ON h.holder_id = i.holder_id WHERE i.programme_id = $1 AND i.period = $2"
        " AND i.state = $3 AND i.holder_id > $4 ORDER BY i.holder_id LIMIT $5",
        programme_id, period, state, after_holder, limit))
