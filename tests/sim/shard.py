"""A simulated AccountShard: the real Ledger in a shell that mirrors AccountShardCore's order
(ensure loaded, apply, submit to the group-commit writer, answer once durable) over a Store
that can fail, in an actor that can crash. Recovery mirrors persistence.recovery.load_ledger."""

from collections.abc import Callable
from dataclasses import dataclass, field

from citycard.domain.cards import encode_card, restore_card
from citycard.domain.ledger import Ledger
from citycard.domain.shard import shard_of
from citycard.domain.tables import FareTables
from citycard.domain.taps import JournalRow, Outcome, Tap

from .model import Model
from .scenario import CardSpec, Faults, Scenario
from .store import Store
from .world import EPOCH_MS, World

COMMIT_MS = (1, 15)  # how long a group commit takes
LOAD_MS = (5, 40)
RESTART_MS = (50, 400)  # Ray restarting a dead actor
SNAPSHOT_MS = (2, 30)

Reply = Callable[["ShardCall", str | None, list[Outcome] | None], None]


@dataclass
class ShardCall:
    """One Ray call ``apply(taps)`` from the gateway; ``error`` None means it returned outcomes."""

    call_id: int
    gateway_epoch: int
    taps: list[Tap]
    replied: bool = field(default=False)


def recover(store: Store, shard_id: int, tables: FareTables, cards: list[CardSpec], dedupe_limit: int,
            *, mutation: str | None = None) -> tuple[Ledger, int]:
    """Rebuild a ledger from the record, as recovery.load_ledger does: cards, the newest snapshot,
    watermarks for rows older than the dedupe memory, then the journal tail. Returns the ledger
    and the number of replayed rows whose balance_after disagrees with the rebuilt balance."""
    ledger = Ledger(shard_id, tables, dedupe_limit)
    for spec in cards:
        ledger.add_card(spec.fresh())
    snapshot_lsn, head_lsn = store.snapshot_lsn, store.head_lsn
    if snapshot_lsn:
        for card_no, state in store.snapshot.items():
            restore_card(ledger.cards[card_no], state)
        ledger.lsn = snapshot_lsn
    start = max(0, min(snapshot_lsn, head_lsn - dedupe_limit))
    rows = store.rows
    if start and mutation != "no_watermark_on_recovery":
        high: dict[int, int] = {}
        for row in rows[:start]:
            high[row.terminal_id] = max(high.get(row.terminal_id, 0), row.seq)
        for terminal_id, seq in high.items():
            ledger.raise_watermark(terminal_id, seq)
    mismatches = 0
    for row in rows[start:]:
        effect = row.lsn > snapshot_lsn
        ledger.replay(row, apply_effect=effect)
        if effect:
            card = ledger.cards.get(row.card_no)
            if card is not None and card.purses[0] != row.balance_after_fen:
                mismatches += 1
    if mutation == "forget_dedupe_on_recovery":  # mutant: a recovery that does not refill the dedupe memory
        ledger._seen.clear()
        ledger._seen_order.clear()
    return ledger, mismatches


class Writer:
    """Mirrors persistence.journal.JournalWriter: a FIFO of (rows, done); one group commit at a
    time of whole submissions up to max_rows; a failed commit fails everything pending and
    breaks the writer (memory is then ahead of the record)."""

    def __init__(self, shard: "SimShard") -> None:
        self.shard = shard
        self.queue: list[tuple[list[JournalRow], Callable[[bool], None]]] = []
        self.busy = False
        self.broken: str | None = None
        self.group: list[tuple[list[JournalRow], Callable[[bool], None]]] = []

    @property
    def idle(self) -> bool:
        return not self.queue and not self.busy

    def submit(self, rows: list[JournalRow], done: Callable[[bool], None]) -> None:
        if self.broken is not None:
            self.shard.world.at(0, done, False)
            return
        self.queue.append((rows, done))
        self.kick()

    def kick(self) -> None:
        if self.busy or self.broken is not None or not self.queue:
            return
        take, n, max_rows = 0, 0, self.shard.sc.commit_max_rows
        while take < len(self.queue) and (n == 0 or n + len(self.queue[take][0]) <= max_rows):
            n += len(self.queue[take][0])
            take += 1
        self.group, self.queue = self.queue[:take], self.queue[take:]
        self.busy = True
        w = self.shard.world
        w.at(w.rng.randint(*COMMIT_MS), self._landed, self.shard.incarnation)

    def records(self) -> list[JournalRow]:
        return [r for rows, _ in self.group for r in rows]

    def _landed(self, incarnation: int) -> None:
        shard, w, f = self.shard, self.shard.world, self.shard.faults
        if incarnation != shard.incarnation:
            return  # the actor died meanwhile (crash() settled this commit)
        records = self.records()
        group, self.group, self.busy = self.group, [], False
        if records and w.chance(f.p_commit_fail):
            return self._fail("commit failed", group)
        if not shard.store.commit(records):
            return self._fail("fenced out: the journal head moved", group)
        if w.chance(f.p_crash_commit):
            return shard.crash("after commit, before the answer")
        if records and w.chance(f.p_commit_ambiguous):
            return self._fail("commit stored, but the connection broke before COMMIT's answer", group)
        for _, done in group:
            w.at(0, done, True)  # futures resolve; their callers resume on a later loop turn
        self.kick()
        if self.idle and shard.ledger is not None:
            shard.model.check_memory(shard.shard_id, shard.ledger, "after a commit")

    def _fail(self, why: str, group: list[tuple[list[JournalRow], Callable[[bool], None]]]) -> None:
        w = self.shard.world
        w.log(f"shard{self.shard.shard_id}", why)
        self.broken = why
        pending, self.queue = group + self.queue, []
        for _, done in pending:
            w.at(0, done, False)


class SimShard:
    def __init__(self, world: World, model: Model, sc: Scenario, shard_id: int, tables: FareTables,
                 reply: Reply) -> None:
        self.world = world
        self.model = model
        self.sc = sc
        self.faults: Faults = sc.faults
        self.shard_id = shard_id
        self.tables = tables
        self.cards = [c for c in sc.cards if shard_of(c.card_no, sc.n_shards) == shard_id]
        self.store = Store(shard_id, model, fenced=world.fenced)
        self.reply = reply
        self.name = f"shard{shard_id}"
        self.alive = True
        self.incarnation = 0
        self.ledger: Ledger | None = None
        self.writer: Writer | None = None
        self.loading = False
        self.waiting: list[ShardCall] = []
        self.calls: dict[int, ShardCall] = {}  # calls this incarnation has not answered
        self.last_snapshot_lsn = 0
        self.snapshotting = False
        self.crashes = self.recoveries = 0

    # -- the Ray shell -------------------------------------------------------------------
    def on_call(self, call: ShardCall) -> None:
        if not self.alive:
            self._answer(call, "actor died", None)
            return
        self.calls[id(call)] = call
        if self._ready():
            self._apply(call)
        else:
            self.waiting.append(call)
            self._ensure_loading()

    def _ready(self) -> bool:
        if self.ledger is None or self.writer is None or self.loading:
            return False
        if self.writer.broken is not None and self.world.mutation == "keep_memory_after_commit_failure":
            self.writer = Writer(self)  # mutant: a new connection, but the memory is not rebuilt
        return self.writer.broken is None

    def _apply(self, call: ShardCall) -> None:
        assert self.ledger is not None and self.writer is not None
        outcomes, rows = self.ledger.apply(call.taps, EPOCH_MS + self.world.now_ms)
        self.world.log(self.name, f"apply call {call.call_id}: {len(call.taps)} taps, {len(rows)} rows")
        if self.world.mutation == "answer_before_commit":
            self._answer(call, None, outcomes)
        if self.world.chance(self.faults.p_crash_apply):
            self.crash("after apply, before commit")
            return
        incarnation = self.incarnation
        self.writer.submit(rows, lambda ok: self._durable(call, outcomes, ok, incarnation))

    def _durable(self, call: ShardCall, outcomes: list[Outcome], ok: bool, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        if not ok:
            self._answer(call, "store error", None)
            return
        self._maybe_snapshot()
        self._answer(call, None, outcomes)

    def _answer(self, call: ShardCall, error: str | None, outcomes: list[Outcome] | None) -> None:
        self.calls.pop(id(call), None)
        if call.replied:
            return
        call.replied = True
        if outcomes is not None:
            for tap, o in zip(call.taps, outcomes, strict=True):
                self.model.check_decided(self.name, tap.terminal_id, tap.seq, (o.result, o.fare_fen, o.balance_fen, o.replay))
        self.reply(call, error, outcomes)

    # -- crash and recovery --------------------------------------------------------------
    def crash(self, why: str) -> None:
        w = self.world
        w.log(self.name, f"CRASH {why}")
        self.crashes += 1
        writer = self.writer
        if writer is not None and writer.busy and w.rng.random() < 0.5:
            # COMMIT had reached the store before the process died: it lands now, or (hazard
            # "zombie": the actor was declared dead but its process still ran) some time later
            if w.zombie and writer.records():
                w.at(w.rng.randint(0, 1_000), self._zombie_commit, writer.records())
            else:
                self.store.commit(writer.records())
        self.incarnation += 1
        self.alive = False
        self.ledger, self.writer, self.loading, self.snapshotting = None, None, False, False
        calls, self.calls, self.waiting = list(self.calls.values()), {}, []
        for call in calls:  # Ray fails the calls of a dead actor
            self._answer(call, "actor died", None)
        w.at(w.rng.randint(*RESTART_MS), self._restarted, self.incarnation)

    def _zombie_commit(self, records: list[JournalRow]) -> None:
        landed = self.store.commit(records)
        self.world.log(self.name, f"zombie commit of lsn {records[0].lsn}..: {'landed' if landed else 'fenced out'}")

    def _restarted(self, incarnation: int) -> None:
        if incarnation == self.incarnation:
            self.alive = True  # loads itself on the first call
            self.world.log(self.name, "restarted")

    def _ensure_loading(self) -> None:
        if not self.loading:
            self.loading = True
            w = self.world
            w.at(w.rng.randint(*LOAD_MS), self._loaded, self.incarnation)

    def _loaded(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        self.loading = False
        waiting, self.waiting = self.waiting, []
        if self.world.chance(self.faults.p_load_fail):
            self.world.log(self.name, "recovery failed: store unavailable")
            for call in waiting:
                self._answer(call, "store unavailable", None)
            return
        ledger, mismatches = recover(self.store, self.shard_id, self.tables, self.cards, self.sc.dedupe_limit,
                                     mutation=self.world.mutation)
        if mismatches:
            self.world.fail("recovery-balances-match-rows", f"shard {self.shard_id}: {mismatches} rows disagree")
        self.ledger, self.writer = ledger, Writer(self)
        self.last_snapshot_lsn = self.store.snapshot_lsn
        self.recoveries += 1
        self.world.log(self.name, f"recovered at lsn {ledger.lsn} (snapshot {self.store.snapshot_lsn})")
        self.model.check_memory(self.shard_id, ledger, "after recovery")
        for call in waiting:
            if self._ready():
                self._apply(call)
            else:
                self.waiting.append(call)
                self._ensure_loading()

    # -- snapshots -----------------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        ledger, writer = self.ledger, self.writer
        if ledger is None or writer is None or self.snapshotting:
            return
        if not writer.idle and self.world.mutation != "snapshot_while_committing":
            return
        if ledger.lsn - self.last_snapshot_lsn < self.sc.snapshot_every_rows:
            return
        lsn, states = ledger.lsn, {c.card_no: encode_card(c) for c in ledger.cards.values()}
        self.model.check_snapshot(self.store, lsn, states)
        self.last_snapshot_lsn = lsn
        self.snapshotting = True
        w = self.world
        w.at(w.rng.randint(*SNAPSHOT_MS), self._snapshot_written, self.incarnation, lsn, states)

    def _snapshot_written(self, incarnation: int, lsn: int, states: dict[int, bytes]) -> None:
        if incarnation == self.incarnation:
            self.snapshotting = False
        if not self.world.chance(self.faults.p_snapshot_fail):
            self.store.save_snapshot(lsn, states)
            self.world.log(self.name, f"snapshot at lsn {lsn}")
