"""A shard actor as Ray runs it: the product's AccountShardCore (its ledger, journal writer,
recovery and snapshots) inside a process that can die. The handle mimics a Ray actor handle
(``actor.apply.remote(payload)`` is awaitable) so the product's Router calls it unchanged.

A crash kills the process: every task of the incarnation is cancelled, calls in flight fail
with ActorDied, and after a restart delay Ray builds a new core, which reloads from the record
on its first call. Broken variants of the core (``MUTANTS``) prove the checks catch what
they claim to."""

import asyncio
from typing import Any

import msgspec

from citycard.actors.account_shard import AccountShardCore
from citycard.domain.taps import Outcome, Tap
from citycard.persistence.journal import JournalWriter

from .loop import Owner
from .model import Model
from .network import Link
from .scenario import Scenario
from .store import Record, SimStore
from .world import EPOCH_MS, ActorDied, CallFailed, World

RESTART_MS = (50, 400)  # Ray restarting a dead actor
_taps_decoder = msgspec.msgpack.Decoder(list[Tap])
_outcomes_decoder = msgspec.msgpack.Decoder(list[Outcome])
_encoder = msgspec.msgpack.Encoder()


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

    async def ensure_loaded(self) -> None:
        if self.writer is not None and self.writer.broken is not None and self.ledger is not None:
            self.writer = JournalWriter(self.store.append(), self.settings.ledger.commit_max_rows)
            self.writer.committed_lsn = self.ledger.lsn
            self.writer.start()
        await super().ensure_loaded()


class SnapshotWhileCommitting(AccountShardCore):
    """Mutant: snapshots memory while a group commit is still pending."""

    def _maybe_snapshot(self) -> None:
        ledger = self.ledger
        if ledger is None or (self._snapshot_task is not None and not self._snapshot_task.done()):
            return
        if ledger.lsn - self._last_snapshot_lsn >= self.settings.ledger.snapshot_every_rows:
            self._start_snapshot()


# The store-side mutants (forget_dedupe_on_recovery, no_watermark_on_recovery) are in store.py.
MUTANTS: dict[str, type[AccountShardCore]] = {
    "answer_before_commit": AnswerBeforeCommit,
    "keep_memory_after_commit_failure": KeepMemoryAfterCommitFailure,
    "snapshot_while_committing": SnapshotWhileCommitting,
}


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class SimActor:
    def __init__(self, world: World, model: Model, sc: Scenario, shard_id: int, record: Record,
                 settings: dict[str, Any], link: Link) -> None:
        self.world = world
        self.model = model
        self.sc = sc
        self.shard_id = shard_id
        self.record = record
        self.settings = settings
        self.link = link
        self.name = f"shard{shard_id}"
        self.core_class = MUTANTS.get(world.mutation or "", AccountShardCore)
        self.incarnation = 0
        self.crashes = 0
        self.recoveries = 0  # of dead incarnations; the live one's are core.recoveries
        self.apply = _Method(self._apply_remote)
        self.apply_ops = _Method(self._apply_ops_remote)
        self.owner = Owner(f"{self.name}#0")
        self.core: AccountShardCore | None = self._new_core()

    def _new_core(self) -> AccountShardCore:
        from .sim import tables

        store = SimStore(self.world, self.model, self.sc.faults, self.record, self)
        world = self.world
        return self.core_class(self.shard_id, self.settings, store=store, tables=tables(),
                               wall_ms=lambda: EPOCH_MS + world.now_ms)

    @property
    def total_recoveries(self) -> int:
        return self.recoveries + (self.core.recoveries if self.core is not None else 0)

    # -- Ray's side ----------------------------------------------------------------------
    async def _apply_remote(self, payload: bytes) -> tuple[bytes, float]:
        """The gateway's ``actor.apply.remote(payload)``: delivered over the call link (delayed,
        maybe twice), run in the actor, its reply maybe lost on the way back."""
        return await self._remote(self._run_apply, payload)  # type: ignore[no-any-return]

    async def _apply_ops_remote(self, payload: bytes) -> bytes:
        """The API's ``actor.apply_ops.remote(payload)``, over the same faulty link."""
        return await self._remote(self._run_apply_ops, payload)  # type: ignore[no-any-return]

    async def _remote(self, run: Any, payload: bytes) -> Any:
        w, f = self.world, self.sc.faults
        await asyncio.sleep(self.link.latency_ms() / 1000.0)
        if w.chance(f.p_dup):
            self.link.duplicated += 1
            self._start(run, payload)  # the same call delivered twice; its reply goes nowhere
        if w.chance(f.p_crash_during_call):  # at any point of the call: applying, committing, answering
            w.at(w.rng.randint(0, 30), self.kill, "during a call", self.incarnation)
        result = await self._start(run, payload)
        await asyncio.sleep(self.link.latency_ms() / 1000.0)
        if w.chance(f.p_call_error):
            w.log("ray", f"reply from {self.name} lost")
            raise CallFailed("reply lost")
        return result

    def _start(self, run: Any, payload: bytes) -> "asyncio.Future[Any]":
        loop = self.world.loop
        answer: asyncio.Future[Any] = loop.create_future()
        answer.add_done_callback(lambda a: a.cancelled() or a.exception())  # a duplicate's is never awaited
        if self.core is None or not self.owner.alive:
            answer.set_exception(ActorDied(f"{self.name} is dead"))
            return answer
        task = loop.create_task(run(self.core, payload), context=self.owner.context())

        def settle(t: "asyncio.Task[Any]") -> None:
            if answer.done():
                return
            if t.cancelled():
                answer.set_exception(ActorDied(f"{self.name} died during the call"))
            elif t.exception() is not None:
                answer.set_exception(t.exception())  # type: ignore[arg-type]
            else:
                answer.set_result(t.result())

        task.add_done_callback(settle)
        return answer

    async def _run_apply(self, core: AccountShardCore, payload: bytes) -> tuple[bytes, float]:
        packed, commit_ms = await core.apply(payload)
        outcomes = _outcomes_decoder.decode(packed)
        for tap, o in zip(_taps_decoder.decode(payload), outcomes, strict=True):
            self.model.check_decided(self.name, tap.terminal_id, tap.seq, (o.result, o.fare_fen, o.balance_fen, o.replay))
        writer = core.writer
        if writer is not None and writer.idle and writer.broken is None and core.ledger is not None:
            self.model.check_memory(self.shard_id, core.ledger, "after a commit")
        return packed, commit_ms

    async def _run_apply_ops(self, core: AccountShardCore, payload: bytes) -> bytes:
        packed = await core.apply_ops(payload)
        writer = core.writer
        if writer is not None and writer.idle and writer.broken is None and core.ledger is not None:
            self.model.check_memory(self.shard_id, core.ledger, "after a commit")
        return packed

    # -- crash and restart ---------------------------------------------------------------
    async def crash(self, why: str) -> None:
        """Called from inside the actor (its store); the calling task is cancelled with the rest."""
        self.kill(why)
        await asyncio.sleep(0)  # the cancellation lands here

    def kill(self, why: str, incarnation: int | None = None) -> None:
        """kill -9 of the process (of ``incarnation`` only, if given)."""
        w = self.world
        if incarnation is not None and incarnation != self.incarnation or self.core is None:
            return
        w.log(self.name, f"CRASH {why}")
        self.crashes += 1
        if self.core is not None:
            self.recoveries += self.core.recoveries
        self.core = None
        self.owner.kill()
        self.incarnation += 1
        w.at(w.rng.randint(*RESTART_MS), self._restarted, self.incarnation)

    def _restarted(self, incarnation: int) -> None:
        if incarnation == self.incarnation:
            self.owner = Owner(f"{self.name}#{incarnation}")
            self.core = self.owner.run(self._new_core)  # Ray runs __init__ again; it loads on the first call
            self.world.log(self.name, "restarted")
