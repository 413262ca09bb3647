"""What an AccountShard needs of the durable record, behind one interface.

``PgShardStore`` is the product's (asyncpg, three connections); tests/sim has an in-memory
store that fails, delays and crashes on purpose. The shard itself (actors/account_shard.py)
only calls these methods, so the simulation runs the product's shard, not a copy.
"""

import asyncio
from typing import Any, Protocol

import asyncpg

from ..domain.cards import CardState
from ..domain.ledger import Ledger
from ..domain.taps import JournalRow
from ..errors import StoreError
from . import db, recovery
from .journal import JOURNAL_COLUMNS, Append, pg_append
from .migrate import journal_partition


class ShardStore(Protocol):
    async def open(self) -> None:
        """(Re)connect; connections of an earlier open are dropped."""

    async def load(self, ledger: Ledger) -> recovery.RecoveryReport:
        """Fill an empty ledger from the record (cards, snapshot, journal tail)."""

    def append(self) -> Append:
        """The group-commit function for this open's JournalWriter."""

    async def write_snapshot(self, lsn: int, rows: list[tuple[int, int, bytes]], total_fen: int) -> None: ...

    async def compact_states(self) -> int:
        """Delete stored card states a newer one supersedes; returns how many."""

    async def find_ops(self, keys: list[str]) -> list[JournalRow]:
        """Journal rows of these card-service op keys (older than the shard's op memory)."""

    async def fetch_cards(self, card_nos: list[int]) -> list[CardState]:
        """Cards of this shard written to the cards table since it loaded."""

    async def close(self) -> None: ...


class PgShardStore:
    def __init__(self, db_url: str, schema: str, shard_id: int, command_timeout_s: float | None = None) -> None:
        self.db_url = db_url
        self.schema = schema
        self.shard_id = shard_id
        # A hung commit fails (the writer breaks, the shard reloads) instead of holding every
        # waiting tap for good; pg_append drops the connection when it passes.
        self.command_timeout_s = command_timeout_s
        self._conn: asyncpg.Connection | None = None  # journal writer and recovery
        self._side_conn: asyncpg.Connection | None = None  # snapshots
        self._ops_conn: asyncpg.Connection | None = None  # op-key and card lookups, not blocked by snapshots
        self._ops_lock = asyncio.Lock()

    async def open(self) -> None:
        # New connections first: a lookup running meanwhile uses the old ones, never none.
        fresh = [await db.connect(self.db_url, self.schema) for _ in range(3)]
        await self.close()
        self._conn, self._side_conn, self._ops_conn = fresh

    def _open(self, conn: asyncpg.Connection | None) -> asyncpg.Connection:
        if conn is None:
            raise StoreError(f"shard {self.shard_id}: the store is not open")
        return conn

    async def load(self, ledger: Ledger) -> recovery.RecoveryReport:
        return await recovery.load_ledger(self._open(self._conn), ledger)

    def append(self) -> Append:
        return pg_append(self._open(self._conn), self.shard_id, self.schema, self.command_timeout_s)

    async def write_snapshot(self, lsn: int, rows: list[tuple[int, int, bytes]], total_fen: int) -> None:
        await recovery.write_snapshot(self._open(self._side_conn), self.shard_id, lsn, rows, total_fen)

    async def compact_states(self) -> int:
        return await recovery.compact_states(self._open(self._side_conn), self.shard_id)

    async def find_ops(self, keys: list[str]) -> list[JournalRow]:
        conn = self._open(self._ops_conn)
        async with self._ops_lock:
            found = await conn.fetch(
                f"SELECT {', '.join(JOURNAL_COLUMNS)} FROM {journal_partition(self.shard_id)}"
                " WHERE shard_id = $2 AND op_key = any($1::text[])", keys, self.shard_id,  # the index's shape
            )
        return [JournalRow(*rec) for rec in found]

    async def fetch_cards(self, card_nos: list[int]) -> list[CardState]:
        conn = self._open(self._ops_conn)
        async with self._ops_lock:  # not the snapshot connection: a snapshot may be writing
            rows = await conn.fetch(
                f"SELECT {recovery.CARD_COLUMNS} FROM cards WHERE card_no = any($1::bigint[]) AND shard_id = $2",
                card_nos, self.shard_id,
            )
        return [recovery.card_from_record(rec) for rec in rows]

    async def close(self) -> None:
        conns: list[Any] = [self._conn, self._side_conn, self._ops_conn]
        self._conn = self._side_conn = self._ops_conn = None
        for c in conns:
            if c is not None:
                c.terminate()
