"""In-memory network: messages arrive after a latency; while faults are on they may be dropped,
duplicated or delayed (random delays reorder them)."""

from collections.abc import Callable
from typing import Any

from .scenario import Faults
from .world import World

BASE_LATENCY_MS = 1


class Link:
    """One kind of hop (terminal<->gateway frames, or gateway<->shard calls)."""

    def __init__(self, world: World, name: str, faults: Faults, *, lossy: bool) -> None:
        self.world = world
        self.name = name
        self.faults = faults
        self.lossy = lossy  # drops apply to this hop (Ray calls are not lost, they fail)
        self.sent = self.dropped = self.duplicated = 0

    def send(self, deliver: Callable[..., None], *payload: Any) -> None:
        w, f = self.world, self.faults
        self.sent += 1
        if self.lossy and w.chance(f.p_drop):
            self.dropped += 1
            w.log(self.name, "drop")
            return
        w.at(self.latency_ms(), deliver, *payload)
        if w.chance(f.p_dup):
            self.duplicated += 1
            w.log(self.name, "duplicate")
            w.at(self.latency_ms(), deliver, *payload)

    def latency_ms(self) -> int:
        w, f = self.world, self.faults
        if w.chance(f.p_delay):
            return BASE_LATENCY_MS + w.rng.randint(0, f.max_delay_ms)
        return BASE_LATENCY_MS
