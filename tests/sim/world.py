"""The simulated world: one seeded RNG and a deterministic asyncio loop on a fake clock."""

import asyncio
import contextlib
import random
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from citycard.actors.shard_client import ShardUnavailable
from citycard.errors import StoreError

from .loop import Owner, SimLoop

EPOCH_MS = 1_700_000_000_000  # fake time 0 as a Unix time: inside the shipped fare table


class ActorDied(Exception):
    """What Ray raises to callers of an actor that died (RayActorError)."""


class CallFailed(Exception):
    """A call whose reply was lost on the way back."""


# Failures the product is built to meet; anything else raised in a task is a bug.
EXPECTED_ERRORS = (StoreError, ActorDied, CallFailed, TimeoutError, ShardUnavailable)


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
    """One seeded RNG and the simulated loop's fake clock. Terminals and the network schedule
    plain callbacks with ``at``; the product's code schedules its own on the same loop."""

    def __init__(self, seed: int, *, verbose: bool = False, mutation: str | None = None,
                 zombie: bool = False, fenced: bool = True) -> None:
        self.seed = seed
        self.zombie = zombie  # hazard: a dead actor's last COMMIT may land up to 1 s later
        self.fenced = fenced  # as the product: commits conditional on the journal head (False: before the fix)
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.mutation = mutation
        self.faults_until_ms = 0  # no faults are injected from this time on (the world heals)
        self._open_taps = 0  # planned taps without their final answer yet: the run ends at 0
        self._all_final: asyncio.Event | None = None
        self.failure: SimFailure | None = None
        self.ended = False
        self.loop = SimLoop(self._task_failed)
        self.loop.set_exception_handler(self._callback_failed)
        self._root = Owner("world")  # terminals and the network: never killed

    @property
    def now_ms(self) -> int:
        return self.loop.now_ms

    @property
    def open_taps(self) -> int:
        return self._open_taps

    @open_taps.setter
    def open_taps(self, n: int) -> None:
        self._open_taps = n
        if n == 0 and self._all_final is not None:
            self._all_final.set()

    @property
    def events(self) -> int:
        return self.loop_events

    loop_events = 0

    def chance(self, p: float) -> bool:
        """True with probability ``p`` while faults are on; always False once healed."""
        return p > 0 and not self.ended and self.now_ms < self.faults_until_ms and self.rng.random() < p

    def at(self, delay_ms: int, fn: Callable[..., None], *args: Any) -> None:
        if self.ended:
            return  # a coroutine of this world closed after its end (by the GC, say)
        self.loop_events += 1
        self.loop.call_later(delay_ms / 1000.0, fn, *args, context=self._root.context())

    def run(self, until_ms: int) -> None:
        """Run until every tap is final, a failure, or ``until_ms`` of fake time."""
        loop = self.loop

        async def main() -> None:
            # open_taps may touch 0 and rise again in one callback (a deliberate resend): look again
            while self._open_taps and self.now_ms < until_ms:
                self._all_final = asyncio.Event()
                try:
                    await asyncio.wait_for(self._all_final.wait(), max(0, until_ms - self.now_ms) / 1000.0)
                except TimeoutError:
                    return  # the end audit names the taps still unanswered

        try:
            loop.run_until_complete(main())
        except RuntimeError:
            if self.failure is None:  # stopped by fail(); anything else is the simulation's bug
                raise
        finally:
            self.ended = True
            for _ in range(10):  # cancelled tasks may settle others; bounded in rounds and fake time
                tasks = asyncio.all_tasks(loop)
                if not tasks:
                    break
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
            for task in asyncio.all_tasks(loop):  # still pending: run their finally blocks now, not at GC
                with contextlib.suppress(BaseException):
                    task.get_coro().close()  # type: ignore[union-attr]
            loop.close()
        if self.failure is not None:
            raise self.failure

    def log(self, who: str, what: str) -> None:
        if self.verbose:
            print(f"{self.now_ms:>9} ms  {who:<12} {what}")

    def fail(self, invariant: str, detail: str) -> NoReturn:
        flags = (" --zombie" if self.zombie else "") + ("" if self.fenced else " --unfenced")
        failure = SimFailure(self.seed, invariant, detail, self.now_ms, self.mutation, flags)
        if self.failure is None:
            self.failure = failure  # the first one is the seed's report; the loop stops
            self.loop.stop()
        raise failure

    # -- errors the loop would only log ----------------------------------------------------
    def _task_failed(self, task: "asyncio.Task[Any]", exc: BaseException) -> None:
        if isinstance(exc, EXPECTED_ERRORS) or self.failure is not None:
            return
        self._unexpected(exc)

    def _callback_failed(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, SimFailure) or self.failure is not None or self.ended:
            return
        if isinstance(exc, EXPECTED_ERRORS) and "never retrieved" in context.get("message", ""):
            return
        if exc is None:
            what = context.get("task") or context.get("future") or context.get("handle")
            exc = RuntimeError(f"{context.get('message')} {what!r}"[:600])
        self._unexpected(exc)

    def _unexpected(self, exc: BaseException) -> None:
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        place = f" at {where.filename}:{where.lineno}" if where else ""
        try:
            self.fail("no-exception", f"{exc!r}{place}")
        except SimFailure:
            pass
