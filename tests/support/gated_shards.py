"""A ShardClient stand-in for router unit tests: each call waits for the test to open its gate,
so the test sees what queues meanwhile."""

import asyncio
from collections.abc import Sequence

from citycard.actors.shard_client import TapAnswer
from citycard.domain.taps import Outcome, Tap


class GatedShards:
    n_shards = 1

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gates: list[asyncio.Event] = []

    async def apply_taps(self, shard_id: int, taps: Sequence[Tap]) -> TapAnswer:
        self.calls.append(len(taps))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return TapAnswer([Outcome(0, 200, 1000, False) for _ in taps], 0.0, 0.0, 1)


async def settle() -> None:
    """A few loop turns: enough for a call's answer to reach its taps and the next call to go."""
    for _ in range(5):
        await asyncio.sleep(0)
