"""One seed's run: build the world from the seed (the product's shards, journal writers,
recovery, router and protocol shell, on a fake clock), run it until every tap has its final
answer (or the deadline), then audit the end state."""

import copy
import logging
import zlib
from dataclasses import dataclass
from typing import Any

from citycard.config.fare_table import shipped_tables
from citycard.config.settings import load_settings
from citycard.domain.cards import encode_card
from citycard.domain.ledger import Ledger
from citycard.domain.shard import shard_of
from citycard.domain.tables import FareTables

from .counter import SimCounter
from .gateway import SimGateway
from .model import Model
from .network import Link
from .scenario import MASTER_KEY, Scenario, make_scenario
from .session import SimSession, TerminalsTable, check_totals
from .shard import SimActor
from .store import Record
from .terminal import SimTerminal
from .world import World

HEAL_GRACE_MS = 300_000  # after the faults stop, every tap must be final within this
# Deliberately broken variants of the shard, to prove the checker catches what it claims to.
MUTATIONS = (
    "answer_before_commit",  # answers as soon as the ledger applied, before the group commit
    "forget_dedupe_on_recovery",  # recovery rebuilds balances but not the dedupe memory
    "keep_memory_after_commit_failure",  # after a failed commit, keeps its (ahead) memory
    "no_watermark_on_recovery",  # recovery from a snapshot skips the per-terminal watermarks
    "snapshot_while_committing",  # snapshots memory while a group commit is still pending
    "forget_failed_snapshot",  # a snapshot not stored drops its changed cards from the next one
    "snapshot_without_copy_on_write",  # a snapshot encoded in slices stores cards taps changed since
    "no_op_lookup",  # card services: keys evicted from the op memory are not looked up in the journal
    "states_as_of_the_mark",  # recovery takes every stored card state as of the mark, not its own lsn
    "compact_the_newest",  # compaction deletes each card's newest stored state instead of its older ones
)
_tables: FareTables | None = None
_base_settings: dict[str, Any] | None = None


def tables() -> FareTables:
    global _tables
    if _tables is None:
        _tables = shipped_tables()
    return _tables


@dataclass(frozen=True)
class Stats:
    seed: int
    events: int
    end_ms: int
    taps: int
    rows: int
    answers: int
    replays: int
    ops: int
    chatter: int  # pongs and parameter answers terminals received
    crashes: int
    session_crashes: int
    abandoned: int  # calls the caller stopped waiting for (timeout, gateway killed) while they ran
    recoveries: int
    gateway_restarts: int
    pauses: int  # connections the gateway stopped reading (backpressure)
    dropped: int
    duplicated: int
    digest: int  # of the record and the answers: equal for equal seeds, in any process


def shard_settings(sc: Scenario) -> dict[str, Any]:
    """The product's settings (defaults) with this seed's ledger knobs."""
    global _base_settings
    if _base_settings is None:
        _base_settings = load_settings(env={}).as_dict()
    settings = copy.deepcopy(_base_settings)
    settings["ledger"].update(dedupe_limit=sc.dedupe_limit, commit_max_rows=sc.commit_max_rows,
                              snapshot_every_rows=sc.snapshot_every_rows, snapshot_interval_s=sc.snapshot_interval_s,
                              snapshot_quiet_fraction=sc.snapshot_quiet_fraction,
                              snapshot_quiet_cpu_idle=0.0,  # the host's CPU is not the simulation's
                              snapshot_defer_max_rows=sc.snapshot_defer_max_rows,
                              commit_timeout_ms=sc.commit_timeout_ms, load_timeout_ms=20_000)
    settings["city"].update(master_key_hex=MASTER_KEY.hex(), session_shards=sc.n_sessions)
    return settings


def simulate(seed: int, *, mutation: str | None = None, verbose: bool = False, zombie: bool = False,
             fenced: bool = True) -> Stats:
    if mutation is not None and mutation not in MUTATIONS:
        raise ValueError(f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}")
    world = World(seed, verbose=verbose, mutation=mutation, zombie=zombie, fenced=fenced)
    sc = make_scenario(world)
    world.faults_until_ms = sc.faults.until_ms
    model = Model(world, sc.cards)
    frames = Link(world, "net", sc.faults, lossy=True)
    calls = Link(world, "ray", sc.faults, lossy=False)
    settings = shard_settings(sc)
    records = [Record(i, model, [c for c in sc.cards if shard_of(c.card_no, sc.n_shards) == i], fenced=fenced)
               for i in range(sc.n_shards)]
    actors = [SimActor(world, model, sc, i, records[i], settings, calls) for i in range(sc.n_shards)]
    table = TerminalsTable([100 + i for i in range(len(sc.terminals))])
    sessions = [SimSession(world, sc, calls, i, table, settings) for i in range(sc.n_sessions)]
    gateway = SimGateway(world, model, sc, actors, sessions, frames)
    counter = SimCounter(world, model, sc, actors, settings)
    terminals = [SimTerminal(world, model, sc, 100 + i, plan, gateway, frames) for i, plan in enumerate(sc.terminals)]
    if verbose:
        print(f"seed {seed}: {len(sc.cards)} cards {[(c.card_no, c.balance_fen) for c in sc.cards]}, "
              f"{len(terminals)} terminals, {sum(len(p) for p in sc.terminals)} taps, {sc.n_shards} shards, "
              f"faults until {sc.faults.until_ms} ms: {sc.faults}")
    deadline = sc.faults.until_ms + HEAL_GRACE_MS
    world.open_taps = sum(len(p) for p in sc.terminals) + len(sc.ops)
    quiet = logging.getLogger("citycard")
    level = quiet.level
    quiet.setLevel(logging.DEBUG if verbose else logging.CRITICAL)  # retries and reloads are expected here
    try:
        world.run(deadline)  # raises the first SimFailure, product exceptions included
    finally:
        quiet.setLevel(level)
    _audit_end(world, model, records, actors, terminals, counter)
    rows = [r for rec in records for r in rec.rows]
    check_totals(world, sessions, table, rows)
    return Stats(
        seed=seed, events=world.events, end_ms=world.now_ms, taps=len(model.taps), rows=len(rows),
        answers=model.answers, replays=model.replays, ops=len(model.committed_ops),
        chatter=sum(t.pongs + t.params for t in terminals), crashes=sum(a.crashes for a in actors), session_crashes=sum(s.crashes for s in sessions),
        abandoned=sum(a.abandoned for a in [*actors, *sessions]),
        recoveries=sum(a.total_recoveries for a in actors), gateway_restarts=gateway.restarts,
        pauses=gateway.pauses,
        dropped=frames.dropped, duplicated=frames.duplicated + calls.duplicated,
        digest=zlib.crc32(repr((rows, [sorted(t.final.items()) for t in terminals],
                                sorted(counter.final.items()))).encode()),
    )


def _audit_end(world: World, model: Model, records: list[Record], actors: list[SimActor],
               terminals: list[SimTerminal], counter: SimCounter) -> None:
    stuck: dict[str, list[Any]] = {t.name: sorted(t.unanswered) for t in terminals if not t.done}
    unanswered_ops = sorted(set(model.ops) - set(counter.final))
    if unanswered_ops:
        stuck["counter"] = unanswered_ops
    if stuck:
        world.fail("every-tap-answered-after-healing", f"still unanswered: {stuck}")
    for record, actor in zip(records, actors, strict=True):
        rebuilt = Ledger(record.shard_id, tables(), actor.sc.dedupe_limit)
        record.rebuild(rebuilt)
        model.check_memory(record.shard_id, rebuilt, "rebuilt from the record at the end")
        core = actor.core
        live, writer = (core.ledger, core.writer) if core is not None else (None, None)
        if live is None or writer is None or not writer.idle or writer.broken:
            continue
        for card_no, card in live.cards.items():
            if encode_card(card) != encode_card(rebuilt.cards[card_no]):
                world.fail("memory-equals-replay", f"shard {record.shard_id} card {card_no}: live {card!r} "
                           f"(rides {card.rides}, recent {card.recent}) != rebuilt {rebuilt.cards[card_no]!r}")
