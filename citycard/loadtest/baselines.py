"""Baselines measured in the same run as the platform, on the same Postgres.

- ``naive_sql_ledger``: the design we beat. One transaction per tap (UPDATE the balance, INSERT
  a ledger row) on several connections, durable as the server is configured.
- ``raw_copy_rate``: the ceiling. Binary COPY of the journal rows the platform just wrote into
  a table of the same shape, in commits as large as the platform's group commits.
"""

import asyncio
import random
import time
from dataclasses import dataclass

import asyncpg

from ..domain.results import Result
from ..persistence.db import connect

MIN_COPY_ROWS = 1_000
FARE_MIN_FEN = 100
FARE_MAX_FEN = 500
T0_MS = 1_760_000_000_000  # the naive taps' clock: T0 + tap index
OK, INSUFFICIENT_FUNDS = int(Result.OK), int(Result.INSUFFICIENT_FUNDS)  # the naive ledger's codes
_TERMINALS = 1_000


@dataclass(frozen=True)
class NaiveResult:
    taps: int
    elapsed_s: float
    connections: int
    insufficient: int  # taps refused for funds

    @property
    def taps_per_s(self) -> float:
        return self.taps / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class CopyResult:
    rows: int
    elapsed_s: float
    commit_rows: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _admin(db_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(db_url)


# -- the naive SQL ledger ---------------------------------------------------------------------

_NAIVE_DDL = """
CREATE TABLE accounts (card_no bigint PRIMARY KEY, balance_fen bigint NOT NULL);
CREATE TABLE journal (
    card_no           bigint NOT NULL,
    terminal_id       integer NOT NULL,
    seq               bigint NOT NULL,
    time_ms           bigint NOT NULL,
    fare_fen          bigint NOT NULL,
    balance_after_fen bigint,  -- NULL when refused: the naive tap does not read the balance
    code              smallint NOT NULL,
    PRIMARY KEY (terminal_id, seq)
);
"""
_DEBIT = (
    "UPDATE accounts SET balance_fen = balance_fen - $2"
    " WHERE card_no = $1 AND balance_fen >= $2 RETURNING balance_fen"
)
_INSERT = (
    "INSERT INTO journal (card_no, terminal_id, seq, time_ms, fare_fen, balance_after_fen, code)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
)


@dataclass
class _Taps:
    """The planned taps, handed out in order to whichever worker asks next."""

    cards: list[int]
    fares_fen: list[int]
    deadline: float
    next: int = 0
    insufficient: int = 0

    def take(self) -> int | None:
        if self.next >= len(self.cards) or time.perf_counter() >= self.deadline:
            return None
        i = self.next
        self.next += 1
        return i


async def _naive_worker(conn: asyncpg.Connection, taps: _Taps) -> None:
    while (i := taps.take()) is not None:
        card_no, fare_fen = taps.cards[i], taps.fares_fen[i]
        terminal_id, seq = 1 + i % _TERMINALS, 1 + i // _TERMINALS
        async with conn.transaction():
            balance = await conn.fetchval(_DEBIT, card_no, fare_fen)
            code = OK if balance is not None else INSUFFICIENT_FUNDS
            await conn.execute(_INSERT, card_no, terminal_id, seq, T0_MS + i, fare_fen, balance, code)
        if balance is None:
            taps.insufficient += 1


async def naive_sql_ledger(
    db_url: str,
    *,
    schema: str = "citycard_baseline",
    n_cards: int = 100_000,
    n_taps: int = 50_000,
    connections: int = 8,
    time_limit_s: float = 60.0,
    seed: int = 1,
    opening_fen: int = 10_000,
    keep_schema: bool = False,
) -> NaiveResult:
    """Taps through a one-transaction-per-tap SQL ledger; stops at ``n_taps`` or the time limit.

    Card ``k`` (1..n_cards) opens with ``opening_fen``; taps pick seeded random cards and fares
    of 100..500 fen. The schema is dropped and made afresh, and dropped again at the end unless
    ``keep_schema`` (for checking what was written).
    """
    if n_cards < 1 or n_taps < 0 or connections < 1:
        raise ValueError("n_cards and connections must be >= 1, n_taps >= 0")
    rng = random.Random(seed)
    cards = [rng.randint(1, n_cards) for _ in range(n_taps)]
    fares_fen = [rng.randint(FARE_MIN_FEN, FARE_MAX_FEN) for _ in range(n_taps)]
    admin = await _admin(db_url)
    workers: list[asyncpg.Connection] = []
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {_ident(schema)} CASCADE")
        await admin.execute(f"CREATE SCHEMA {_ident(schema)}")
        await admin.execute(f"SET search_path TO {_ident(schema)}")
        await admin.execute(_NAIVE_DDL)
        await admin.copy_records_to_table(
            "accounts", records=[(k, opening_fen) for k in range(1, n_cards + 1)], schema_name=schema
        )
        await admin.execute("ANALYZE accounts")
        workers = [await connect(db_url, schema) for _ in range(connections)]
        started = time.perf_counter()
        taps = _Taps(cards, fares_fen, started + time_limit_s)
        await asyncio.gather(*(_naive_worker(c, taps) for c in workers))
        elapsed_s = time.perf_counter() - started
        return NaiveResult(taps.next, elapsed_s, connections, taps.insufficient)
    finally:
        for c in workers:
            await c.close()
        try:
            if not keep_schema:
                await admin.execute(f"DROP SCHEMA IF EXISTS {_ident(schema)} CASCADE")
        finally:
            await admin.close()


# -- the raw COPY rate ------------------------------------------------------------------------

async def _copy_target(conn: asyncpg.Connection, source_schema: str) -> str:
    """The table the platform COPYs into: a partition of the journal if it is partitioned (with
    the partition's own indexes), else the journal itself. Qualified and quoted."""
    part = await conn.fetchval(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE n.nspname = $1 AND p.relname = 'journal' ORDER BY c.relname LIMIT 1",
        source_schema,
    )
    return f"{_ident(source_schema)}.{_ident(part or 'journal')}"


async def raw_copy_rate(
    db_url: str,
    source_schema: str,
    *,
    n_rows: int = 200_000,
    commit_rows: int = 20_000,
    scratch_schema: str = "citycard_copybench",
    time_limit_s: float = 60.0,
) -> CopyResult:
    """Binary COPY of up to ``n_rows`` of ``source_schema``'s journal rows (lowest lsn first)
    into ``scratch_schema.journal``, made LIKE the platform's journal table INCLUDING ALL, one
    commit per ``commit_rows`` rows. Only the COPYs and commits are timed; stops early (at a
    commit boundary) after ``time_limit_s``. Each row is copied once: no duplicates."""
    if n_rows < MIN_COPY_ROWS or commit_rows < 1:
        raise ValueError(f"n_rows must be >= {MIN_COPY_ROWS} and commit_rows >= 1")
    conn = await _admin(db_url)
    try:
        fetched = await conn.fetch(
            f"SELECT * FROM {_ident(source_schema)}.journal ORDER BY lsn LIMIT $1", n_rows
        )
        if len(fetched) < MIN_COPY_ROWS:
            raise ValueError(
                f"{source_schema}.journal has {len(fetched)} rows; the COPY baseline needs at"
                f" least {MIN_COPY_ROWS}"
            )
        columns = list(fetched[0].keys())
        records = [tuple(r) for r in fetched]
        del fetched
        like = await _copy_target(conn, source_schema)
        await conn.execute(f"DROP SCHEMA IF EXISTS {_ident(scratch_schema)} CASCADE")
        try:
            await conn.execute(f"CREATE SCHEMA {_ident(scratch_schema)}")
            await conn.execute(
                f"CREATE TABLE {_ident(scratch_schema)}.journal (LIKE {like} INCLUDING ALL)"
            )
            copied = 0
            started = time.perf_counter()
            deadline = started + time_limit_s
            while copied < len(records) and time.perf_counter() < deadline:
                chunk = records[copied:copied + commit_rows]
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "journal", records=chunk, columns=columns, schema_name=scratch_schema
                    )
                copied += len(chunk)
            elapsed_s = time.perf_counter() - started
            return CopyResult(copied, elapsed_s, commit_rows)
        finally:
            await conn.execute(f"DROP SCHEMA IF EXISTS {_ident(scratch_schema)} CASCADE")
    finally:
        await conn.close()
