"""A Ray actor as the product sees it: a handle whose ``method.remote(...)`` is awaitable, over
a faulty call link (delayed, duplicated, replies lost), running one of the product's actor
cores in a process that can be killed. A kill cancels every task of that incarnation, fails
the calls in flight with ActorDied, and after a restart delay Ray builds a new core."""

import asyncio
from typing import Any

from .loop import Owner
from .network import Link
from .scenario import Scenario
from .world import ActorDied, CallFailed, World

RESTART_MS = (50, 400)  # Ray restarting a dead actor


class Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class SimRayActor:
    # Ray runs an actor task at most once (max_task_retries=0). Shard calls are delivered twice
    # anyway, now and then, to press on their dedupe; actors whose calls are not idempotent by
    # design (a session's running totals) set this False.
    duplicate_calls = True

    def __init__(self, world: World, sc: Scenario, link: Link, name: str) -> None:
        self.world = world
        self.sc = sc
        self.link = link
        self.name = name
        self.incarnation = 0
        self.crashes = 0
        self.abandoned = 0  # calls their caller stopped waiting for while the actor ran them
        self.unawaited = 0  # calls whose caller had given up before they arrived
        self.owner = Owner(f"{name}#0")
        self.core: Any = self._new_core()

    def _new_core(self) -> Any:
        raise NotImplementedError

    def _on_death(self, core: Any) -> None:
        """Keep what the dead core counted."""

    async def _remote(self, run: Any, *args: Any) -> Any:
        """The call as the caller awaits it. Once sent it reaches the actor even if the caller
        stops waiting (a timeout, the gateway killed), as with Ray; only the reply is lost."""
        delivered = self.world.loop.create_future()
        self.world.at(self.link.latency_ms(), self._deliver, delivered, run, args)
        answer = await delivered
        return await self._reply(answer)

    def _deliver(self, delivered: "asyncio.Future[Any]", run: Any, args: tuple[Any, ...]) -> None:
        w, f = self.world, self.sc.faults
        if self.duplicate_calls and w.chance(f.p_dup):
            self.link.duplicated += 1
            self._start(run, *args)  # the same call delivered twice; its reply goes nowhere
        if w.chance(f.p_crash_during_call):  # at any point of the call
            w.at(w.rng.randint(0, 30), self.kill, "during a call", self.incarnation)
        answer = self._start(run, *args)
        if delivered.cancelled():
            self.unawaited += 1  # the caller gave up before it arrived; the actor runs it anyway
        else:
            delivered.set_result(answer)

    async def _reply(self, answer: "asyncio.Future[Any]") -> Any:
        w, f = self.world, self.sc.faults
        try:
            result = await asyncio.shield(answer)  # the caller giving up does not stop the actor
        except asyncio.CancelledError:
            if not answer.done():
                self.abandoned += 1  # a caller's timeout (or death) while the actor still works
            raise
        await asyncio.sleep(self.link.latency_ms() / 1000.0)
        if w.chance(f.p_call_error):
            w.log("ray", f"reply from {self.name} lost")
            raise CallFailed("reply lost")
        return result

    def _start(self, run: Any, *args: Any) -> "asyncio.Future[Any]":
        loop = self.world.loop
        answer: asyncio.Future[Any] = loop.create_future()
        answer.add_done_callback(lambda a: a.cancelled() or a.exception())  # a duplicate's is never awaited
        if self.core is None or not self.owner.alive:
            answer.set_exception(ActorDied(f"{self.name} is dead"))
            return answer
        task = loop.create_task(run(self.core, *args), context=self.owner.context())

        def settle(t: "asyncio.Task[Any]") -> None:
            if answer.done():
                return
            if t.cancelled():
                answer.set_exception(ActorDied(f"{self.name} died during the call"))
            elif t.exception() is not None:
                answer.set_exception(t.exception())  # type: ignore[arg-type]
            else:
                answer.set_result(t.result())

        task.add_done_callback(settle)
        return answer

    async def crash(self, why: str) -> None:
        """Called from inside the actor; the calling task is cancelled with the rest."""
        self.kill(why)
        await asyncio.sleep(0)  # the cancellation lands here

    def kill(self, why: str, incarnation: int | None = None) -> None:
        """kill -9 of the process (of ``incarnation`` only, if given)."""
        w = self.world
        if incarnation is not None and incarnation != self.incarnation or self.core is None:
            return
        w.log(self.name, f"CRASH {why}")
        self.crashes += 1
        self._on_death(self.core)
        self.core = None
        self.owner.kill()
        self.incarnation += 1
        w.at(w.rng.randint(*RESTART_MS), self._restarted, self.incarnation)

    def _restarted(self, incarnation: int) -> None:
        if incarnation == self.incarnation:
            self.owner = Owner(f"{self.name}#{incarnation}")
            self.core = self.owner.run(self._new_core)  # Ray runs __init__ again
            self.world.log(self.name, "restarted")
