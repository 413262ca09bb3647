"""The simulated world: one seeded RNG, a fake clock and an event queue ordered by (time, n)."""

import heapq
import random
from collections.abc import Callable
from typing import Any, NoReturn

EPOCH_MS = 1_700_000_000_000  # fake time 0 as a Unix time: inside the shipped fare table


class SimFailure(AssertionError):
    """An invariant broke. The message names the seed, the invariant and how to replay it."""

    def __init__(self, seed: int, invariant: str, detail: str, now_ms: int, mutation: str | None,
                 flags: str = "") -> None:
        self.seed = seed
        self.invariant = invariant
        self.detail = detail
        self.now_ms = now_ms
        flag = (f" --mutation {mutation}" if mutation else "") + flags
        super().__init__(
            f"sim seed {seed}: invariant [{invariant}] violated at t={now_ms} ms: {detail}\n"
            f"  replay: .venv/bin/python -m tests.sim.run --seed {seed}{flag}"
        )


class World:
    def __init__(self, seed: int, *, verbose: bool = False, mutation: str | None = None,
                 zombie: bool = False, fenced: bool = True) -> None:
        self.seed = seed
        self.zombie = zombie  # hazard: a dead actor's last COMMIT may land up to 1 s later
        self.fenced = fenced  # as the product: commits conditional on the journal head (False: before the fix)
        self.rng = random.Random(seed)
        self.now_ms = 0
        self.verbose = verbose
        self.mutation = mutation
        self.faults_until_ms = 0  # no faults are injected from this time on (the world heals)
        self.events = 0
        self.open_taps = 0  # planned taps without their final answer yet: the run ends at 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._n = 0

    @property
    def faulty(self) -> bool:
        return self.now_ms < self.faults_until_ms

    def chance(self, p: float) -> bool:
        """True with probability ``p`` while faults are on; always False once healed."""
        return p > 0 and self.now_ms < self.faults_until_ms and self.rng.random() < p

    def at(self, delay_ms: int, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (self.now_ms + delay_ms, self._n, fn, args))
        self._n += 1

    def run(self, until_ms: int) -> None:
        """Run events in (time, n) order until every tap is final, or ``until_ms``."""
        queue = self._queue
        while queue and queue[0][0] <= until_ms and self.open_taps:
            when, _, fn, args = heapq.heappop(queue)
            self.now_ms = when
            self.events += 1
            fn(*args)

    def log(self, who: str, what: str) -> None:
        if self.verbose:
            print(f"{self.now_ms:>9} ms  {who:<12} {what}")

    def fail(self, invariant: str, detail: str) -> NoReturn:
        flags = (" --zombie" if self.zombie else "") + ("" if self.fenced else " --unfenced")
        raise SimFailure(self.seed, invariant, detail, self.now_ms, self.mutation, flags)
