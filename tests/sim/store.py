"""The durable record of one shard (``Record``: committed journal rows and the newest snapshot,
kept across crashes) and ``SimStore``, the product's ShardStore interface over it for one actor
incarnation: its commits take time, fail, fail ambiguously, and the actor may die around them.
Recovery is the product's ``recovery.Rebuild`` fed from the record."""

import asyncio
from typing import TYPE_CHECKING, Any

from citycard.actors.journal_writer import Append
from citycard.domain.cards import CardState
from citycard.domain.ledger import Ledger
from citycard.domain.recovery import Rebuild, RecoveryReport
from citycard.domain.taps import JournalRow
from citycard.errors import StoreError

from .model import Model
from .scenario import CardSpec, Faults
from .world import World

if TYPE_CHECKING:
    from .shard import SimActor

COMMIT_MS = (1, 15)  # how long a group commit takes
OPEN_MS = (1, 10)
LOAD_MS = (5, 40)
SNAPSHOT_MS = (2, 30)
SNAPSHOT_CHUNK_CARDS = 1  # the product's 20,000; one here, so that snapshots stop between chunks
ZOMBIE_MS = (0, 1_000)


class Record:
    def __init__(self, shard_id: int, model: Model, cards: list[CardSpec], *, fenced: bool = True) -> None:
        self.shard_id = shard_id
        self.fenced = fenced
        self.model = model
        self.cards = cards  # the cards table of this shard
        self.rows: list[JournalRow] = []  # rows[i].lsn == i + 1 (the model checks it)
        self.snapshot_lsn = 0  # the newest snapshot mark
        # (as_of_lsn, card_no, encoded state), as the card_state_log table: a snapshot appends
        # the cards changed since the last one; compaction deletes states a newer one supersedes
        self.states: list[tuple[int, int, bytes]] = []
        self.commits = 0

    @property
    def head_lsn(self) -> int:
        return len(self.rows)

    def commit(self, rows: list[JournalRow]) -> bool:
        """One transaction: all rows or none. Fenced, as pg_append is: the head moves only from
        the lsn the rows follow on, so a writer that is no longer the head's owner commits nothing."""
        if not rows:
            return True
        if self.fenced and rows[0].lsn != self.head_lsn + 1:
            return False
        self.model.on_commit(self, rows)
        self.rows.extend(rows)
        self.commits += 1
        return True

    def save_states(self, lsn: int, states: dict[int, bytes]) -> None:
        """One chunk of recovery.write_snapshot: one transaction."""
        self.states.extend((lsn, card_no, state) for card_no, state in states.items())

    def superseded(self, *, newest: bool = False) -> list[int]:
        """Indexes of the states recovery.compact_states deletes: each older than its card's
        newest. ``newest``: the mutant that deletes the newest of a card with older ones instead."""
        top: dict[int, int] = {}
        oldest: dict[int, int] = {}
        for lsn, card_no, _state in self.states:
            top[card_no] = max(top.get(card_no, lsn), lsn)
            oldest[card_no] = min(oldest.get(card_no, lsn), lsn)
        if newest:
            return [i for i, (lsn, c, _) in enumerate(self.states) if lsn == top[c] and oldest[c] < lsn]
        return [i for i, (lsn, c, _) in enumerate(self.states) if lsn < top[c]]

    def delete_states(self, indexes: set[int]) -> None:
        """One chunk of recovery.compact_states: one transaction."""
        self.states = [s for i, s in enumerate(self.states) if i not in indexes]

    def mark_snapshot(self, lsn: int) -> None:
        """recovery.write_snapshot's last transaction, once every chunk is stored."""
        self.snapshot_lsn = max(self.snapshot_lsn, lsn)

    def rebuild(self, ledger: Ledger, *, watermarks: bool = True, card_lsns: bool = True) -> RecoveryReport:
        """What recovery.load_ledger's queries return, fed to the product's Rebuild.
        ``card_lsns`` False: the mutant that takes every stored state as of the mark."""
        rebuild = Rebuild(ledger, self.snapshot_lsn, self.head_lsn)
        rebuild.add_cards(c.fresh() for c in self.cards)
        rebuild.restore_snapshot((card_no, as_of if card_lsns else min(as_of, self.snapshot_lsn), state)
                                 for as_of, card_no, state in sorted(self.states, key=lambda s: s[0]))
        if rebuild.start and watermarks:
            high: dict[int, int] = {}
            for row in self.rows[:rebuild.start]:
                high[row.terminal_id] = max(high.get(row.terminal_id, 0), row.seq)
            rebuild.watermarks(high.items())
        for row in self.rows[rebuild.start:]:
            rebuild.row(row)
        return rebuild.report()


class SimStore:
    """The product's ShardStore for one incarnation of a shard actor (its "connections")."""

    def __init__(self, world: World, model: Model, faults: Faults, record: Record, actor: "SimActor") -> None:
        self.world = world
        self.model = model
        self.faults = faults
        self.record = record
        self.actor = actor
        self.name = f"shard{record.shard_id}"

    async def _io(self, span_ms: tuple[int, int]) -> None:
        await asyncio.sleep(self.world.rng.randint(*span_ms) / 1000.0)

    async def open(self) -> None:
        await self._io(OPEN_MS)
        if self.world.chance(self.faults.p_load_fail):
            self.world.log(self.name, "connect failed: store unavailable")
            raise StoreError("store unavailable")

    async def load(self, ledger: Ledger) -> RecoveryReport:
        if self.world.chance(self.faults.p_commit_hang):  # the recovery's reads stall; the shard's load timeout ends it
            self.world.log(self.name, "recovery hangs")
            await asyncio.sleep(self.world.rng.randint(1, 40))
        await self._io(LOAD_MS)
        if self.world.chance(self.faults.p_load_fail):
            self.world.log(self.name, "recovery failed: store unavailable")
            raise StoreError("store unavailable")
        mutation = self.world.mutation
        report = self.record.rebuild(ledger, watermarks=mutation != "no_watermark_on_recovery",
                                     card_lsns=mutation != "states_as_of_the_mark")
        if mutation == "forget_dedupe_on_recovery":  # mutant: recovery that does not refill the dedupe memory
            for stripe in ledger._seen:
                stripe.clear()
            ledger._seen_order.clear()
        if report.mismatches:
            self.world.fail("recovery-balances-match-rows", f"shard {ledger.shard_id}: {report.mismatches} rows disagree")
        self.world.log(self.name, f"recovered at lsn {ledger.lsn} (snapshot {self.record.snapshot_lsn})")
        self.model.check_memory(ledger.shard_id, ledger, "after recovery")
        return report

    def append(self) -> Append:
        return self._append

    async def _append(self, records: list[tuple[Any, ...]]) -> None:
        w, f, actor = self.world, self.faults, self.actor
        rows = [JournalRow(*r) for r in records]
        if w.chance(f.p_crash_apply):
            await actor.crash("after apply, before commit")
        try:
            if w.chance(f.p_commit_hang):  # a stalled disk or lock: the writer's commit timeout ends it
                w.log(self.name, "commit hangs")
                await asyncio.sleep(w.rng.randint(1, 3) * actor.commit_timeout_s)
            await self._io(COMMIT_MS)
        except asyncio.CancelledError:
            # the process died or the commit timed out; COMMIT may have reached the store first:
            # it lands now, or (hazard "zombie": declared dead, still running) some time later
            if not w.ended and w.rng.random() < 0.5:
                if w.zombie:
                    w.at(w.rng.randint(*ZOMBIE_MS), self._zombie_commit, rows)
                else:
                    self.record.commit(rows)
            raise
        if w.chance(f.p_commit_fail):
            w.log(self.name, "commit failed")
            raise StoreError("commit failed")
        if not self.record.commit(rows):
            w.log(self.name, "fenced out: the journal head moved")
            raise StoreError("the journal head is not where these rows follow on: another writer owns this shard")
        if w.chance(f.p_crash_commit):
            await actor.crash("after commit, before the answer")
        if w.chance(f.p_commit_ambiguous):
            w.log(self.name, "commit stored, but the connection broke before COMMIT's answer")
            raise StoreError("connection lost during COMMIT")

    def _zombie_commit(self, rows: list[JournalRow]) -> None:
        landed = self.record.commit(rows)
        self.world.log(self.name, f"zombie commit of lsn {rows[0].lsn}..: {'landed' if landed else 'fenced out'}")

    async def write_snapshot(self, lsn: int, rows: list[tuple[int, int, bytes]], total_fen: int) -> None:
        states = {card_no: state for card_no, _money, state in rows}
        self.model.check_snapshot(self.record, lsn, states)
        await self._io(SNAPSHOT_MS)
        if self.world.chance(self.faults.p_snapshot_fail):
            raise StoreError("snapshot failed")
        items = list(states.items())
        for i in range(0, len(items), SNAPSHOT_CHUNK_CARDS):  # as recovery.write_snapshot: a transaction each
            if i:
                await self._io(SNAPSHOT_MS)
                if self.world.chance(self.faults.p_snapshot_fail):
                    self.world.log(self.name, f"snapshot at lsn {lsn} failed after {i} of {len(items)} cards")
                    raise StoreError("snapshot failed between chunks")
            self.record.save_states(lsn, dict(items[i:i + SNAPSHOT_CHUNK_CARDS]))
        self.record.mark_snapshot(lsn)
        self.world.log(self.name, f"snapshot at lsn {lsn}")

    async def compact_states(self) -> int:
        """As recovery.compact_states: the superseded states found in one read, deleted a chunk
        a transaction; it may fail between chunks."""
        await self._io(SNAPSHOT_MS)
        doomed = [self.record.states[i] for i in
                  self.record.superseded(newest=self.world.mutation == "compact_the_newest")]
        deleted = 0
        for i in range(0, len(doomed), SNAPSHOT_CHUNK_CARDS):
            await self._io(SNAPSHOT_MS)
            if self.world.chance(self.faults.p_snapshot_fail):
                self.world.log(self.name, f"compaction failed after {deleted} of {len(doomed)} states")
                raise StoreError("compaction failed between chunks")
            part = set(doomed[i:i + SNAPSHOT_CHUNK_CARDS])  # by value, as the product checks card and lsn
            before = len(self.record.states)
            self.record.delete_states({k for k, s in enumerate(self.record.states) if s in part})
            deleted += before - len(self.record.states)
        self.world.log(self.name, f"compacted {deleted} card states")
        return deleted

    async def find_ops(self, keys: list[str]) -> list[JournalRow]:
        await self._io(OPEN_MS)
        if self.world.mutation == "no_op_lookup":  # mutant: op keys older than the op memory are not looked up
            return []
        return [r for r in self.record.rows if r.op_key in keys]

    async def fetch_cards(self, card_nos: list[int]) -> list[CardState]:
        return [c.fresh() for c in self.record.cards if c.card_no in card_nos]

    async def close(self) -> None:
        pass
