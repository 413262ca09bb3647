"""One seed's run: build the world from the seed, run it until every tap has its final answer
(or the deadline), then audit the end state."""

import traceback
from dataclasses import dataclass

from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import encode_card
from citycard.domain.tables import FareTables

from .gateway import SimGateway
from .model import Model
from .network import Link
from .scenario import make_scenario
from .shard import SimShard, recover
from .terminal import SimTerminal
from .world import SimFailure, World

HEAL_GRACE_MS = 300_000  # after the faults stop, every tap must be final within this
# Deliberately broken variants of the shard, to prove the checker catches what it claims to.
MUTATIONS = (
    "answer_before_commit",  # answers as soon as the ledger applied, before the group commit
    "forget_dedupe_on_recovery",  # recovery rebuilds balances but not the dedupe memory
    "keep_memory_after_commit_failure",  # after a failed commit, keeps its (ahead) memory
    "no_watermark_on_recovery",  # recovery from a snapshot skips the per-terminal watermarks
    "snapshot_while_committing",  # snapshots memory while a group commit is still pending
)
_tables: FareTables | None = None


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
    crashes: int
    recoveries: int
    gateway_restarts: int
    dropped: int
    duplicated: int
    digest: int  # of the record and the answers: equal for equal seeds


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
    gateway_box: list[SimGateway] = []
    shards = [
        SimShard(world, model, sc, i, tables(),
                 lambda call, err, outs: calls.send(gateway_box[0].on_call_reply, call, err, outs))
        for i in range(sc.n_shards)
    ]
    gateway = SimGateway(world, model, sc, shards, frames, calls)
    gateway_box.append(gateway)
    terminals = [SimTerminal(world, model, sc, 100 + i, plan, gateway, frames) for i, plan in enumerate(sc.terminals)]
    if verbose:
        print(f"seed {seed}: {len(sc.cards)} cards {[(c.card_no, c.balance_fen) for c in sc.cards]}, "
              f"{len(terminals)} terminals, {sum(len(p) for p in sc.terminals)} taps, {sc.n_shards} shards, "
              f"faults until {sc.faults.until_ms} ms: {sc.faults}")
    deadline = sc.faults.until_ms + HEAL_GRACE_MS
    try:
        world.open_taps = sum(len(p) for p in sc.terminals)
        world.run(deadline)
        _audit_end(world, model, shards, terminals)
    except (SimFailure, BrokenPipeError):
        raise
    except Exception as exc:  # a bug in the product (or the sim) raised: report it with the seed
        where = traceback.extract_tb(exc.__traceback__)[-1]
        world.fail("no-exception", f"{exc!r} at {where.filename}:{where.lineno}")
    rows = [r for s in shards for r in s.store.rows]
    return Stats(
        seed=seed, events=world.events, end_ms=world.now_ms, taps=len(model.taps), rows=len(rows),
        answers=model.answers, replays=model.replays, crashes=sum(s.crashes for s in shards),
        recoveries=sum(s.recoveries for s in shards), gateway_restarts=gateway.restarts,
        dropped=frames.dropped, duplicated=frames.duplicated + calls.duplicated,
        digest=hash((tuple(rows), tuple(tuple(sorted(t.final.items())) for t in terminals))),
    )


def _audit_end(world: World, model: Model, shards: list[SimShard], terminals: list[SimTerminal]) -> None:
    stuck = {t.name: sorted(t.unanswered) for t in terminals if not t.done}
    if stuck:
        world.fail("every-tap-answered-after-healing", f"still unanswered: {stuck}")
    for shard in shards:
        rebuilt, _ = recover(shard.store, shard.shard_id, tables(), shard.cards, shard.sc.dedupe_limit)
        model.check_memory(shard.shard_id, rebuilt, "rebuilt from the record at the end")
        live, writer = shard.ledger, shard.writer
        if live is None or writer is None or not writer.idle or writer.broken:
            continue
        for card_no, card in live.cards.items():
            if encode_card(card) != encode_card(rebuilt.cards[card_no]):
                world.fail("memory-equals-replay", f"shard {shard.shard_id} card {card_no}: live {card!r} "
                           f"(rides {card.rides}, recent {card.recent}) != rebuilt {rebuilt.cards[card_no]!r}")
