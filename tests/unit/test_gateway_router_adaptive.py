"""Adaptive shard calls: while a call is in flight, single taps gather into the next call
instead of each making its own, until ``pipeline_min_taps`` are queued."""

import asyncio

from citycard.domain.taps import Tap
from citycard.gateway.metrics import Metrics
from citycard.gateway.router import Pending, Router
from tests.support.gated_shards import GatedShards, settle


def _submit(router: Router, seq: int, answered: list[int]) -> None:
    router.submit(Pending(lambda p: answered.append(seq), seq, True, [Tap(7, seq, 1001, 0, 1, 12)]))


def _router(shards: GatedShards, pipeline_min_taps: int) -> Router:
    return Router(shards, set(), Metrics(), batch_max_taps=100, inflight_calls=3,  # type: ignore[arg-type]
                  queue_max_taps=1000, linger_ms=0, pipeline_min_taps=pipeline_min_taps)


def test_single_taps_gather_behind_the_call_in_flight() -> None:
    async def go() -> None:
        shards = GatedShards()
        router = _router(shards, pipeline_min_taps=4)
        answered: list[int] = []
        _submit(router, 1, answered)
        await settle()
        assert shards.calls == [1]
        for seq in (2, 3, 4):
            _submit(router, seq, answered)
        await settle()
        assert shards.calls == [1]  # 3 queued, fewer than 4: they wait for the call in flight
        _submit(router, 5, answered)
        await settle()
        assert shards.calls == [1, 4]  # 4 queued: a second call overlaps the first
        _submit(router, 6, answered)
        await settle()
        assert shards.calls == [1, 4]
        shards.gates[0].set()
        await settle()
        assert answered == [1]
        assert shards.calls == [1, 4]  # one still in flight, one tap queued: it waits
        shards.gates[1].set()
        await settle()
        assert shards.calls == [1, 4, 1]  # nothing in flight: the lone tap goes at once
        shards.gates[2].set()
        await settle()
        assert sorted(answered) == [1, 2, 3, 4, 5, 6]

    asyncio.run(go())


def test_pipeline_min_of_one_overlaps_every_call() -> None:
    async def go() -> None:
        shards = GatedShards()
        router = _router(shards, pipeline_min_taps=1)
        answered: list[int] = []
        for seq in (1, 2, 3, 4):
            _submit(router, seq, answered)
            await settle()
        assert shards.calls == [1, 1, 1]  # up to inflight_calls, then the fourth waits
        for gate in shards.gates:
            gate.set()
        await settle()
        await settle()
        assert shards.calls == [1, 1, 1, 1]
        shards.gates[3].set()
        await settle()
        assert sorted(answered) == [1, 2, 3, 4]

    asyncio.run(go())
