"""A shard actor as Ray runs it: the product's AccountShardCore (its ledger, journal writer,
recovery and snapshots) inside a process that can die (ray.py). The product's Router and
ShardClient call it unchanged; a new core reloads from the record on its first call. Broken
variants of the core (``MUTANTS``) prove the checks catch what they claim to."""

import asyncio
from typing import Any

import msgspec

from citycard.actors.account_shard import READY_TIMEOUT_S, AccountShardCore
from citycard.actors.journal_writer import JournalWriter
from citycard.domain.cards import encode_card
from citycard.domain.ledger import Ledger
from citycard.domain.taps import Outcome, Tap

from .model import Model
from .network import Link
from .ray import Method, SimRayActor
from .scenario import Scenario
from .store import Record, SimStore
from .world import EPOCH_MS, World

_taps_decoder = msgspec.msgpack.Decoder(list[Tap])
_outcomes_decoder = msgspec.msgpack.Decoder(list[Outcome])
_encoder = msgspec.msgpack.Encoder()


# A snapshot's cards are encoded a slice at a time; small here, so taps land between slices
SIM_SNAPSHOT_SLICE_CARDS = 2
SIM_SNAPSHOT_SLICE_PAUSE_S = 0.002
SIM_COMPACT_MIN_STATE_ROWS = 1  # so compaction follows the shard's own cards: twice them


class AnswerBeforeCommit(AccountShardCore):
    """Mutant: answers as soon as the ledger applied, before the group commit."""

    async def apply(self, payload: bytes) -> tuple[bytes, float]:
        await self.ensure_loaded()
        assert self.ledger is not None and self.writer is not None
        outcomes, rows = self.ledger.apply(_taps_decoder.decode(payload), self.wall_ms())
        self.writer.submit(rows).add_done_callback(lambda f: f.cancelled() or f.exception())
        return _encoder.encode(outcomes), 0.0


class KeepMemoryAfterCommitFailure(AccountShardCore):
    """Mutant: after a failed commit, a new writer but the (ahead) memory is kept."""

    async def ensure_loaded(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        if self.writer is not None and self.writer.broken is not None and self.ledger is not None:
            self.writer = JournalWriter(self.store.append(), self.settings.ledger.commit_max_rows)
            self.writer.committed_lsn = self.ledger.lsn
            self.writer.start()
        await super().ensure_loaded(timeout_s)


class SnapshotWhileCommitting(AccountShardCore):
    """Mutant: snapshots memory while a group commit is still pending."""

    def _maybe_snapshot(self) -> None:
        ledger = self.ledger
        if ledger is None or (self._snapshot_task is not None and not self._snapshot_task.done()):
            return
        if ledger.lsn - self._last_snapshot_lsn >= self.settings.ledger.snapshot_every_rows:
            self._start_snapshot()


class ForgetFailedSnapshot(AccountShardCore):
    """Mutant: a snapshot that was not stored does not hand its changed cards back, so the next
    one leaves them out and the record's card states fall behind the mark."""

    async def _write_snapshot(self, ledger: Ledger, lsn: int) -> None:
        while not ledger.snapshots.step(self.snapshot_slice_cards):
            await asyncio.sleep(self.snapshot_slice_pause_s)
        rows, _changed = ledger.snapshots.finish()
        await self.store.write_snapshot(lsn, rows, sum(money for _, money, _ in rows))


class SnapshotWithoutCopyOnWrite(AccountShardCore):
    """Mutant: encodes the snapshot's cards a slice at a time without the ledger's copy on
    write, so a card a tap changed meanwhile is stored with that tap in it."""

    async def _write_snapshot(self, ledger: Ledger, lsn: int) -> None:
        pending = list(ledger.snapshots.pending or ())
        ledger.snapshots.pending = set()  # the ledger sees nothing left to protect
        rows = []
        for k, card_no in enumerate(pending):
            card = ledger.cards.get(card_no)
            if card is not None:
                rows.append((card_no, sum(card.purses), encode_card(card)))
            if k % self.snapshot_slice_cards == 0:
                await asyncio.sleep(self.snapshot_slice_pause_s)
        _rows, changed = ledger.snapshots.finish()
        try:
            await self.store.write_snapshot(lsn, rows, sum(money for _, money, _ in rows))
        except BaseException:
            ledger.snapshots.restore(changed)  # as the product does: only the copy on write is missing
            raise


# The store-side mutants (forget_dedupe_on_recovery, no_watermark_on_recovery) are in store.py.
MUTANTS: dict[str, type[AccountShardCore]] = {
    "answer_before_commit": AnswerBeforeCommit,
    "keep_memory_after_commit_failure": KeepMemoryAfterCommitFailure,
    "snapshot_while_committing": SnapshotWhileCommitting,
    "forget_failed_snapshot": ForgetFailedSnapshot,
    "snapshot_without_copy_on_write": SnapshotWithoutCopyOnWrite,
}


class SimActor(SimRayActor):
    """An AccountShard: the product's AccountShardCore over a SimStore on this shard's record."""

    def __init__(self, world: World, model: Model, sc: Scenario, shard_id: int, record: Record,
                 settings: dict[str, Any], link: Link) -> None:
        self.model = model
        self.shard_id = shard_id
        self.record = record
        self.settings = settings
        self.core_class = MUTANTS.get(world.mutation or "", AccountShardCore)
        self.recoveries = 0  # of dead incarnations; the live one's are core.recoveries
        self.apply = Method(self._apply_remote)
        self.apply_ops = Method(self._apply_ops_remote)
        super().__init__(world, sc, link, f"shard{shard_id}")

    def _new_core(self) -> AccountShardCore:
        from .sim import tables

        store = SimStore(self.world, self.model, self.sc.faults, self.record, self)
        world = self.world
        core = self.core_class(self.shard_id, self.settings, store=store, tables=tables(),
                               wall_ms=lambda: EPOCH_MS + world.now_ms)
        core.snapshot_slice_cards, core.snapshot_slice_pause_s = SIM_SNAPSHOT_SLICE_CARDS, SIM_SNAPSHOT_SLICE_PAUSE_S
        core.compact_min_state_rows = SIM_COMPACT_MIN_STATE_ROWS
        return core

    def _on_death(self, core: AccountShardCore) -> None:
        self.recoveries += core.recoveries

    @property
    def commit_timeout_s(self) -> float:
        return float(self.settings["ledger"]["commit_timeout_ms"]) / 1000.0

    @property
    def total_recoveries(self) -> int:
        return self.recoveries + (self.core.recoveries if self.core is not None else 0)

    async def _apply_remote(self, payload: bytes) -> tuple[bytes, float]:
        """The gateway's ``actor.apply.remote(payload)``."""
        return await self._remote(self._run_apply, payload)  # type: ignore[no-any-return]

    async def _apply_ops_remote(self, payload: bytes, with_views: bool = True) -> bytes:
        """The card services' ``actor.apply_ops.remote(payload, with_views)``."""
        return await self._remote(self._run_apply_ops, payload, with_views)  # type: ignore[no-any-return]

    async def _run_apply(self, core: AccountShardCore, payload: bytes) -> tuple[bytes, float]:
        packed, commit_ms = await core.apply(payload)
        outcomes = _outcomes_decoder.decode(packed)
        for tap, o in zip(_taps_decoder.decode(payload), outcomes, strict=True):
            self.model.check_decided(self.name, tap.terminal_id, tap.seq, (o.result, o.fare_fen, o.balance_fen, o.replay))
        writer = core.writer
        if writer is not None and writer.idle and writer.broken is None and core.ledger is not None:
            self.model.check_memory(self.shard_id, core.ledger, "after a commit")
        return packed, commit_ms

    async def _run_apply_ops(self, core: AccountShardCore, payload: bytes, with_views: bool) -> bytes:
        packed = await core.apply_ops(payload, with_views)
        writer = core.writer
        if writer is not None and writer.idle and writer.broken is None and core.ledger is not None:
            self.model.check_memory(self.shard_id, core.ledger, "after a commit")
        return packed
