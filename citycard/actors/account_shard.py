"""AccountShard: owns the cards of one shard; applies tap batches; answers once durable."""

import asyncio
import logging
import time
from typing import Any

import msgspec
import ray

from ..config.fare_table import load_fare_tables
from ..config.settings import settings_from_dict
from ..domain.ledger import Ledger
from ..domain.ops import CardOp
from ..domain.purses import PURSE_NAMES
from ..domain.tables import FareTables
from ..domain.taps import JournalRow, Tap
from ..errors import StoreError
from ..persistence import db, recovery
from ..persistence.journal import JOURNAL_COLUMNS, JournalWriter
from ..persistence.migrate import journal_partition

log = logging.getLogger(__name__)

_taps_decoder = msgspec.msgpack.Decoder(list[Tap])
_ops_decoder = msgspec.msgpack.Decoder(list[CardOp])  # type: ignore[valid-type]
_encoder = msgspec.msgpack.Encoder()
READY_TIMEOUT_S = 30.0


class AccountShardCore:
    """Everything but the Ray decorator, so tests and tools can run it in-process."""

    def __init__(self, shard_id: int, settings: dict[str, Any], db_url: str) -> None:
        self.shard_id = shard_id
        self.settings = settings_from_dict(settings)
        self.db_url = db_url
        self.tables: FareTables = load_fare_tables(self.settings.fare_table_path())
        self.ledger: Ledger | None = None
        self.writer: JournalWriter | None = None
        self._conn = None
        self._side_conn = None
        self._ops_conn = None  # op-key lookups; its own connection so snapshots do not block them
        self._ops_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._loading: asyncio.Task[Any] | None = None
        self._snapshot_task: asyncio.Task[Any] | None = None
        self._last_snapshot_lsn = 0
        self._last_snapshot_s = time.monotonic()
        self.recovery: recovery.RecoveryReport | None = None
        self.recoveries = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def ensure_loaded(self) -> None:
        if self._ready.is_set() and self.writer is not None and self.writer.broken is None:
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load())
        try:
            await asyncio.wait_for(asyncio.shield(self._loading), READY_TIMEOUT_S)
        except TimeoutError:
            raise StoreError(f"shard {self.shard_id} not ready after {READY_TIMEOUT_S} s") from None

    async def _load(self) -> None:
        self._ready.clear()
        if self.writer is not None:
            await self.writer.close()
        for c in (self._conn, self._side_conn, self._ops_conn):
            if c is not None:
                c.terminate()
        schema = self.settings.database.schema
        self._conn = await db.connect(self.db_url, schema)
        self._side_conn = await db.connect(self.db_url, schema)
        self._ops_conn = await db.connect(self.db_url, schema)
        ledger = Ledger(self.shard_id, self.tables, self.settings.ledger.dedupe_limit)
        self.recovery = await recovery.load_ledger(self._conn, ledger)
        if self.recovery.mismatches:
            log.error("shard %s: %s journal rows disagree with the rebuilt balance",
                      self.shard_id, self.recovery.mismatches)
        self.ledger = ledger
        self._last_snapshot_lsn = self.recovery.snapshot_lsn
        self.writer = JournalWriter(self._conn, self.shard_id, schema, self.settings.ledger.commit_max_rows)
        self.writer.committed_lsn = ledger.lsn
        self.writer.start()
        self.recoveries += 1
        self._ready.set()

    # -- the tap path ------------------------------------------------------------------
    async def apply(self, payload: bytes) -> tuple[bytes, float]:
        """Apply a packed batch of taps; return packed outcomes once they are durable."""
        await self.ensure_loaded()
        assert self.ledger is not None and self.writer is not None
        taps = _taps_decoder.decode(payload)
        outcomes, rows = self.ledger.apply(taps, int(time.time() * 1000))
        await self.writer.submit(rows)
        self._maybe_snapshot()
        return _encoder.encode(outcomes), self.writer.last_commit_ms

    # -- card services -----------------------------------------------------------------
    async def apply_ops(self, payload: bytes) -> bytes:
        """Apply packed card-service ops (each at most once per key); answer once durable."""
        await self.ensure_loaded()
        assert self.ledger is not None and self.writer is not None and self._ops_conn is not None
        ops = _ops_decoder.decode(payload)
        keys = [op.key for op in ops]
        absent: set[str] = set()  # looked up in the journal and not there: new keys
        # Keys older than the op memory are in the journal. While we wait for it another call
        # may evict keys of this batch, so look again until every key is known or new.
        for _ in range(10):
            unknown = [k for k in self.ledger.unknown_op_keys(keys) if k not in absent]
            if not unknown:
                break
            async with self._ops_lock:
                found = await self._ops_conn.fetch(
                    f"SELECT {', '.join(JOURNAL_COLUMNS)} FROM {journal_partition(self.shard_id)}"
                    " WHERE shard_id = $2 AND op_key = any($1::text[])", unknown, self.shard_id,  # the index's shape
                )
            for rec in found:
                self.ledger.remember_op(JournalRow(*rec))
            absent.update(set(unknown) - {rec["op_key"] for rec in found})
        else:
            raise StoreError(f"shard {self.shard_id}: op memory churned during lookups; retry the call")
        # no await between the last memory check and apply_ops: one writer per key
        outcomes, rows = self.ledger.apply_ops(ops, int(time.time() * 1000))
        await self.writer.submit(rows)
        self.ledger.evict_ops(self.writer.committed_lsn)
        return _encoder.encode(outcomes)

    async def card_views(self, card_nos: list[int]) -> list[dict[str, Any] | None]:
        """What the shard holds for each card (None: not in this shard)."""
        await self.ensure_loaded()
        assert self.ledger is not None
        return [_view(self.ledger.cards.get(c)) for c in card_nos]

    # -- snapshots ---------------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        ledger, writer = self.ledger, self.writer
        if ledger is None or writer is None or not writer.idle:
            return
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        lcfg = self.settings.ledger
        due_rows = ledger.lsn - self._last_snapshot_lsn >= lcfg.snapshot_every_rows
        due_time = (time.monotonic() - self._last_snapshot_s >= lcfg.snapshot_interval_s
                    and ledger.lsn > self._last_snapshot_lsn)
        if due_rows or due_time:
            self._start_snapshot()

    def _start_snapshot(self) -> "asyncio.Task[Any]":
        # Taken synchronously while the writer is idle, so memory equals the committed record.
        assert self.ledger is not None
        lsn, rows, total = self.ledger.lsn, self.ledger.snapshot_rows(), self.ledger.total_balance_fen()
        self._last_snapshot_lsn = lsn
        self._last_snapshot_s = time.monotonic()
        self._snapshot_task = asyncio.get_running_loop().create_task(
            recovery.write_snapshot(self._side_conn, self.shard_id, lsn, rows, total)
        )
        return self._snapshot_task

    async def snapshot(self) -> int:
        """Take a snapshot now (waits for pending commits); returns its lsn."""
        await self.ensure_loaded()
        assert self.writer is not None
        await self.writer.submit([])
        if self._snapshot_task is not None and not self._snapshot_task.done():
            await self._snapshot_task
        task = self._start_snapshot()
        await task
        return self._last_snapshot_lsn

    # -- cards and views ---------------------------------------------------------------
    async def add_cards(self, card_nos: list[int]) -> int:
        """Take on cards already written to the cards table (issued since this shard loaded)."""
        await self.ensure_loaded()
        assert self.ledger is not None and self._ops_conn is not None
        async with self._ops_lock:  # not the snapshot connection: a snapshot may be writing
            rows = await self._ops_conn.fetch(
                f"SELECT {recovery.CARD_COLUMNS} FROM cards WHERE card_no = any($1::bigint[]) AND shard_id = $2",
                card_nos, self.shard_id,
            )
        for rec in rows:
            if rec[0] not in self.ledger.cards:
                self.ledger.add_card(recovery.card_from_record(rec))
        return len(self.ledger.cards)

    async def stats(self) -> dict[str, Any]:
        await self.ensure_loaded()
        assert self.ledger is not None and self.writer is not None
        return {
            "shard_id": self.shard_id,
            "cards": len(self.ledger.cards),
            "lsn": self.ledger.lsn,
            "committed_lsn": self.writer.committed_lsn,
            "balance_fen": self.ledger.total_balance_fen(),
            "dedupe": self.ledger.dedupe_size(),
            "commits": self.writer.commits,
            "recoveries": self.recoveries,
            "recovery": None if self.recovery is None else self.recovery.__dict__,
        }

    async def balances(self) -> dict[int, int]:
        await self.ensure_loaded()
        assert self.ledger is not None
        return self.ledger.balances()

    def pid(self) -> int:
        import os

        return os.getpid()


def _view(card: Any) -> dict[str, Any] | None:
    if card is None:
        return None
    return {
        "card_no": card.card_no, "status": card.status, "category": card.category, "apps": card.apps,
        "credit_good": card.credit_good, "insurance": card.insurance, "medical_from_purse": card.medical_from_purse,
        "purses": dict(zip(PURSE_NAMES, card.purses, strict=True)), "total_fen": sum(card.purses),
        "monthly_pass": card.monthly_pass, "park_pass": card.park_pass,
        "voucher_until_ms": card.voucher_until_ms, "voucher_categories": sorted(card.voucher_categories),
        "allowance_until_ms": card.allowance_until_ms, "rental": card.rental, "parking": card.parking,
    }


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=10_000)
class AccountShard(AccountShardCore):
    """Ray shell. Restarted by Ray after a crash; reloads itself from Postgres on first call."""
