"""The counter: card services (top-ups, refunds) through the product's ShardClient, as the
card services call it, with its retry policy. A call that still fails (past the retry
deadline) is retried with the same idempotency key, as an HTTP client retries a 503; now and
then an answered op is sent again on purpose and must come back a replay of its first outcome."""

import asyncio
from typing import Any

from citycard.actors.shard_client import CallPolicy, ShardClient
from citycard.config.settings import settings_from_dict
from citycard.domain.ops import CardOp, Refund, TopUp
from citycard.domain.purses import Purse

from .loop import Owner
from .model import Model
from .scenario import PlannedOp, Scenario
from .shard import SimActor
from .world import EXPECTED_ERRORS, World

RETRY_MS = (50, 1_000)


class SimCounter:
    def __init__(self, world: World, model: Model, sc: Scenario, actors: list[SimActor],
                 settings: dict[str, Any]) -> None:
        self.world = world
        self.model = model
        self.sc = sc
        self.owner = Owner("counter")
        self.client = ShardClient(actors, CallPolicy.from_settings(settings_from_dict(settings)))
        self.final: dict[str, tuple[int, tuple[int, ...], int, bool]] = {}
        self.fresh: set[str] = set()  # keys that got their one non-replay answer
        for op in sc.ops:
            model.ops[op.key] = op.card_no
            world.at(op.at_ms, self._start, op)

    def _start(self, planned: PlannedOp) -> None:
        op: CardOp = (Refund(planned.key, planned.card_no, int(Purse.EPURSE), planned.amount_fen) if planned.refund
                      else TopUp(planned.key, planned.card_no, int(Purse.EPURSE), planned.amount_fen))
        self.world.loop.create_task(self._run(op), context=self.owner.context())

    async def _run(self, op: CardOp, again: bool = False) -> None:
        w = self.world
        while not w.ended:
            try:
                out = await self.client.apply_op(op)
                break
            except EXPECTED_ERRORS as exc:
                w.log("counter", f"op {op.key}: {exc!r}; retry with the same key")
                await asyncio.sleep(w.rng.randint(*RETRY_MS) / 1000.0)
        else:
            return
        outcome = (out.result, tuple(out.deltas), out.balance_after_fen, out.replay)
        w.log("counter", f"op {op.key} -> {outcome}")
        self.model.on_op_answer(op.key, outcome, op.key in self.fresh)
        if not out.replay:
            self.fresh.add(op.key)
        first = self.final.setdefault(op.key, outcome)
        if first[:3] != outcome[:3]:
            w.fail("retry-answer-equals-first", f"op {op.key}: {outcome} after {first}")
        w.open_taps -= 1
        if not again and w.rng.random() < self.sc.p_retry_answered:
            w.open_taps += 1  # the run is not over before this resend has its answer
            await asyncio.sleep(w.rng.randint(0, 3_000) / 1000.0)
            await self._run(op, again=True)
