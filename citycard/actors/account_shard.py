"""AccountShard: owns the cards of one shard; applies tap batches; answers once durable."""

import asyncio
import functools
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec
import psutil
import ray

from ..config.fare_table import load_fare_tables
from ..config.settings import settings_from_dict
from ..domain.ledger import Ledger
from ..domain.merchant_book import MerchantTerms, merge
from ..domain.ops import CardOp
from ..domain.recovery import RecoveryReport
from ..domain.tables import FareTables
from ..domain.taps import Tap
from ..domain.views import view_of
from ..errors import StoreError
from ..persistence import db, merchants
from ..persistence.shard_store import PgShardStore, ShardStore
from ..tasks import Pacer, cancel_and_wait, log_failure
from .journal_writer import JournalWriter
from .quiet import QuietWatch

log = logging.getLogger(__name__)

_taps_decoder = msgspec.msgpack.Decoder(list[Tap])
_ops_decoder = msgspec.msgpack.Decoder(list[CardOp])  # type: ignore[valid-type]
_terms_decoder = msgspec.msgpack.Decoder(list[MerchantTerms])
_encoder = msgspec.msgpack.Encoder()
READY_TIMEOUT_S = 30.0
SNAPSHOT_SLICE_CARDS = 5_000  # encoded between two turns of the loop: ~10 ms at ~2 us a card
COMPACT_MIN_STATE_ROWS = 100_000  # a small shard is not compacted at every snapshot


@functools.cache
def _process_of(pid: int) -> psutil.Process:
    return psutil.Process(pid)


def _process() -> psutil.Process:
    return _process_of(os.getpid())  # by pid: a forked child must not read its parent


def host_cpu_times() -> tuple[float, float]:
    """The host's cumulative (idle, total) CPU seconds, over all cores. Waiting on the disk is
    not idle (Postgres writing WAL); guest time is already counted in user time on Linux."""
    t = psutil.cpu_times()
    total_s = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return t.idle, total_s


def _wall_ms() -> int:
    return int(time.time() * 1000)


class AccountShardCore:
    """Everything but the Ray decorator, so tests, tools and the simulation run it in-process.

    ``store`` is the durable record (Postgres unless given); ``wall_ms`` the Unix time fares
    are decided at; the event loop's time() is the monotonic clock. Both are injected so
    tests/sim can run this class under a fake clock over a store that fails.
    """

    # The simulation makes slices small and spaces them out in its time, so taps land between
    snapshot_slice_cards = SNAPSHOT_SLICE_CARDS
    snapshot_slice_pause_s = 0.0
    # The stored card states are compacted once they pass twice the shard's cards, and this.
    compact_min_state_rows = COMPACT_MIN_STATE_ROWS

    def __init__(self, shard_id: int, settings: dict[str, Any], db_url: str = "", *,
                 store: ShardStore | None = None, tables: FareTables | None = None,
                 wall_ms: Callable[[], int] = _wall_ms) -> None:
        self.shard_id = shard_id
        self.settings = settings_from_dict(settings)
        self.db_url = db_url
        self.tables: FareTables = load_fare_tables(self.settings.fare_table_path()) if tables is None else tables
        self.commit_timeout_s = self.settings.ledger.commit_timeout_ms / 1000.0
        self.store: ShardStore = PgShardStore(
            db_url, self.settings.database.schema, shard_id, self.commit_timeout_s
        ) if store is None else store
        self.wall_ms = wall_ms
        self.ledger: Ledger | None = None
        self.writer: JournalWriter | None = None
        self._ready = asyncio.Event()
        self._loading: asyncio.Task[Any] | None = None
        self._snapshot_task: asyncio.Task[Any] | None = None
        self._last_snapshot_lsn = 0
        self._last_snapshot_s = 0.0  # loop time; set when loaded
        self._state_rows = 0  # rows in the shard's card_state_log, superseded ones included
        lcfg = self.settings.ledger
        self._quiet = QuietWatch(lcfg.snapshot_quiet_fraction, cpu_idle_min=lcfg.snapshot_quiet_cpu_idle,
                                 cpu_times=host_cpu_times if lcfg.snapshot_quiet_cpu_idle > 0 else None)
        self.snapshots_deferred = 0  # times a due snapshot was put off (once each, until it goes)
        self._deferring = False
        self.recovery: RecoveryReport | None = None
        self.recoveries = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def ensure_loaded(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Load if not loaded, and wait up to ``timeout_s`` for it. Calls on the tap path wait
        READY_TIMEOUT_S; the platform's start waits the whole load timeout, as a shard of
        millions of cards loads for longer than a caller should wait."""
        if self._ready.is_set() and self.writer is not None and self.writer.broken is None:
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load())
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # lands as the load finishes (found by the simulation), and the call runs on.
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._loading)
        except TimeoutError:
            raise StoreError(f"shard {self.shard_id} not ready after {timeout_s:g} s") from None

    async def _load(self) -> None:
        self._ready.clear()
        if self.writer is not None:
            await self.writer.close()
        # Memory may be ahead of the record now: nothing may read it until rebuilt.
        self.ledger, self.writer = None, None
        await cancel_and_wait([self._snapshot_task])  # it writes on a connection open() drops
        # Bounded, so a hung load ends and the next call starts a new one; generous, since a
        # shard of millions of cards takes a while (callers stop waiting after READY_TIMEOUT_S).
        async with asyncio.timeout(self.settings.ledger.load_timeout_ms / 1000.0):
            await self.store.open()
            ledger = Ledger(self.shard_id, self.tables, self.settings.ledger.dedupe_limit)
            self.recovery = await self.store.load(ledger)
            await self._load_merchants()
        if self.recovery.mismatches:
            log.error("shard %s: %s journal rows disagree with the rebuilt balance",
                      self.shard_id, self.recovery.mismatches)
        self.ledger = ledger
        self._last_snapshot_lsn = self.recovery.snapshot_lsn
        self._state_rows = self.recovery.states
        self._last_snapshot_s = asyncio.get_running_loop().time()
        self.writer = JournalWriter(self.store.append(), self.settings.ledger.commit_max_rows, self.commit_timeout_s)
        self.writer.committed_lsn = ledger.lsn
        self.writer.start()
        self.recoveries += 1
        self._ready.set()

    # -- the tap path ------------------------------------------------------------------
    async def apply(self, payload: bytes) -> tuple[bytes, float]:
        """Apply a packed batch of taps; return packed outcomes once they are durable."""
        await self.ensure_loaded()
        ledger, writer = self.ledger, self.writer  # a reload may replace them while we wait
        assert ledger is not None and writer is not None
        taps = _taps_decoder.decode(payload)
        outcomes, rows = ledger.apply(taps, self.wall_ms())
        self._quiet.add(asyncio.get_running_loop().time(), len(rows))
        await writer.submit(rows)
        self._maybe_snapshot()
        return _encoder.encode(outcomes), writer.last_commit_ms

    # -- card services -----------------------------------------------------------------
    async def apply_ops(self, payload: bytes, with_views: bool = True) -> bytes:
        """Apply packed card-service ops (each at most once per key); answer once durable.
        ``with_views``: each outcome carries its card's view after the batch (a disbursement
        run, which shows no card, leaves them out)."""
        await self.ensure_loaded()
        ledger, writer = self.ledger, self.writer
        assert ledger is not None and writer is not None
        ops = _ops_decoder.decode(payload)
        keys = [op.key for op in ops]
        absent: set[str] = set()  # looked up in the journal and not there: new keys
        # Keys older than the op memory are in the journal. While we wait for it another call
        # may evict keys of this batch, so look again until every key is known or new.
        for _ in range(10):
            unknown = [k for k in ledger.unknown_op_keys(keys) if k not in absent]
            if not unknown:
                break
            found = await self.store.find_ops(unknown)
            if self.ledger is not ledger:
                raise StoreError(f"shard {self.shard_id} reloaded during the call; retry it")
            for row in found:
                ledger.remember_op(row)
            absent.update(set(unknown) - {row.op_key for row in found})
        else:
            raise StoreError(f"shard {self.shard_id}: op memory churned during lookups; retry the call")
        # no await between the last memory check and apply_ops: one writer per key
        outcomes, rows = ledger.apply_ops(ops, self.wall_ms())
        if with_views:
            cards = ledger.cards
            outcomes = [msgspec.structs.replace(o, view=view_of(cards.get(op.card_no)))
                        for op, o in zip(ops, outcomes, strict=True)]
        await writer.submit(rows)
        ledger.evict_ops(writer.committed_lsn)
        return _encoder.encode(outcomes)

    async def card_views(self, card_nos: list[int]) -> bytes:
        """What the shard holds for each card (None: not in this shard), packed."""
        await self.ensure_loaded()
        assert self.ledger is not None
        cards = self.ledger.cards
        return _encoder.encode([view_of(cards.get(c)) for c in card_nos])

    # -- snapshots ---------------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        ledger, writer = self.ledger, self.writer
        if ledger is None or writer is None or not writer.idle:
            return
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        lcfg = self.settings.ledger
        behind = ledger.lsn - self._last_snapshot_lsn
        now_s = asyncio.get_running_loop().time()
        due = behind >= lcfg.snapshot_every_rows or (
            now_s - self._last_snapshot_s >= lcfg.snapshot_interval_s and behind > 0)
        if not due:
            return
        if behind < max(lcfg.snapshot_defer_max_rows, lcfg.snapshot_every_rows) and not self._quiet.quiet(now_s):
            if not self._deferring:  # busy: wait for a lull, up to the bound
                self._deferring = True
                self.snapshots_deferred += 1
            return
        self._deferring = False
        task = self._start_snapshot()
        task.add_done_callback(log_failure(log, f"shard {self.shard_id}: snapshot"))

    def _start_snapshot(self) -> "asyncio.Task[Any]":
        # Begun while the writer is idle, so memory equals the committed record at this lsn.
        # Only the cards changed since the last snapshot, encoded a slice at a time (a card a
        # tap is about to change is encoded first, by the ledger): writing every card at once
        # stopped a shard of 5 M cards for seconds and filled the WAL (BENCHMARKS.md, issue 17).
        ledger = self.ledger
        assert ledger is not None
        lsn = ledger.lsn
        ledger.snapshots.begin()
        self._last_snapshot_lsn = lsn
        loop = asyncio.get_running_loop()
        self._last_snapshot_s = loop.time()
        self._snapshot_task = loop.create_task(self._write_snapshot(ledger, lsn))
        return self._snapshot_task

    async def _write_snapshot(self, ledger: Ledger, lsn: int) -> None:
        started_s = time.perf_counter()
        try:
            pacer = Pacer(self.snapshot_slice_pause_s)  # taps go on between slices
            while not ledger.snapshots.step(self.snapshot_slice_cards):
                await pacer.pause()
        except BaseException:
            ledger.snapshots.abandon()
            raise
        rows, changed = ledger.snapshots.finish()
        try:
            await self.store.write_snapshot(lsn, rows, sum(money for _, money, _ in rows))
        except BaseException:
            ledger.snapshots.restore(changed)  # not stored: the next snapshot writes them
            raise
        # Appended, a card's older states stay until compacted: at most twice the cards, so
        # the log and a reload's reading of it stay bounded.
        self._state_rows += len(rows)
        log.info("shard %s: snapshot at lsn %s: %s cards in %.1f s", self.shard_id, lsn, len(rows),
                 time.perf_counter() - started_s)
        # (Chunks of a failed snapshot stored before it failed are not counted: the count is
        # low by at most those until the next load reads the log again.)
        if self._state_rows >= 2 * max(len(ledger.cards), self.compact_min_state_rows):
            try:
                self._state_rows -= await self.store.compact_states()
            except Exception as exc:  # the snapshot is stored: the next one tries again
                log.warning("shard %s: compacting card states failed: %r", self.shard_id, exc)

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

    # -- registered merchants (domain/merchant_book.py) ---------------------------------
    async def _load_merchants(self) -> None:
        """Merchants registered through card services are rule data: read at every load (a
        stand-alone core with no database has none)."""
        if not self.db_url:
            return
        conn = await db.connect(self.db_url, self.settings.database.schema)
        try:
            merge(self.tables, await merchants.terms(conn))
        finally:
            await conn.close()

    async def merge_merchants(self, payload: bytes) -> int:
        """Terms just committed (card services pushes them before answering); idempotent."""
        return merge(self.tables, _terms_decoder.decode(payload))

    # -- cards and views ---------------------------------------------------------------
    async def add_cards(self, card_nos: list[int]) -> int:
        """Take on cards already written to the cards table (issued since this shard loaded)."""
        await self.ensure_loaded()
        ledger = self.ledger
        assert ledger is not None
        cards = await self.store.fetch_cards(card_nos)
        if self.ledger is not ledger:
            raise StoreError(f"shard {self.shard_id} reloaded during the call; retry it")  # the reload read them
        for card in cards:
            if card.card_no not in ledger.cards:
                ledger.add_card(card)
        return len(ledger.cards)

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
            "snapshot_lsn": self._last_snapshot_lsn,
            "snapshots_deferred": self.snapshots_deferred,
            "card_state_rows": self._state_rows,
        }

    async def probe(self) -> dict[str, Any]:
        """For the platform's watch, without waiting for a load: is it serving, how many loads
        has this process made, and what its process costs (polled every few seconds). A shard
        not loaded (restarted by Ray, its writer broken) starts loading now rather than at its
        next tap, so that a quiet hour does not leave it unloaded, reading as reloading."""
        ready = self._ready.is_set() and self.writer is not None and self.writer.broken is None
        if not ready and (self._loading is None or self._loading.done()):
            self._loading = asyncio.get_running_loop().create_task(self._load())
            self._loading.add_done_callback(self._load_ended)
        if ready:
            self._maybe_snapshot()  # a snapshot put off at a peak goes in the quiet after it, taps or none
        proc = _process()
        cpu = proc.cpu_times()
        return {
            "shard_id": self.shard_id,
            "ready": ready,
            "loads": self.recoveries,
            "mismatches": 0 if self.recovery is None else self.recovery.mismatches,
            "pid": proc.pid,
            "rss_bytes": proc.memory_info().rss,
            "cpu_s": cpu.user + cpu.system,
        }

    def _load_ended(self, task: "asyncio.Task[Any]") -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:  # retrieved: a caller may not wait
            log.warning("shard %s: load failed: %r (the next probe or call tries again)", self.shard_id, exc)

    async def balances(self) -> dict[int, int]:
        await self.ensure_loaded()
        assert self.ledger is not None
        return self.ledger.balances()

    def pid(self) -> int:
        return os.getpid()


# No task events: Ray kept one per tap batch in the GCS (its memory grew ~45 MB a minute at
# 10,000 taps/s) and spent CPU on both ends recording them; errors are still logged.
@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=10_000, enable_task_events=False)
class AccountShard(AccountShardCore):
    """Ray shell. Restarted by Ray after a crash; reloads itself from Postgres on first call."""

    async def _load(self) -> None:
        await super()._load()
        # The cards just loaded live as long as the process: a full collection would scan every
        # one (5 M per shard at scale 1), stopping taps for as long. Frozen, they are skipped.
        # Process-wide, so here in the shell, not in the core tests run in-process.
        gc.collect()
        gc.freeze()
