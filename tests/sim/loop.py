"""A deterministic asyncio event loop on a fake clock, and owners for tasks.

The product's asyncio code (AccountShardCore, JournalWriter, Router, TerminalProtocol) runs on
this loop unchanged. Nothing does real I/O, so the selector never waits: when the loop would
sleep until its next timer, the clock jumps there. One seed gives one order of events.

An ``Owner`` stands for a process (a shard actor, the gateway). Every task created in its
context belongs to it; killing it cancels them all, and tasks it would create later (a timer
of the dead process firing) are cancelled at birth, as if the process had gone.
"""

import asyncio
import contextvars
import math
import selectors
from collections.abc import Callable
from typing import Any

OWNER: contextvars.ContextVar["Owner | None"] = contextvars.ContextVar("sim_owner", default=None)


class Owner:
    __slots__ = ("name", "alive", "tasks", "_ctx")

    def __init__(self, name: str) -> None:
        self.name = name
        self.alive = True
        self.tasks: dict[asyncio.Task[Any], None] = {}  # ordered: a set's order would vary run to run
        self._ctx = contextvars.copy_context()
        self._ctx.run(OWNER.set, self)

    def context(self) -> contextvars.Context:
        """A context for a callback or task of this process (a copy: never entered twice)."""
        return self._ctx.copy()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.context().run(fn, *args)

    def kill(self) -> None:
        self.alive = False
        for task in list(self.tasks):
            task.cancel()


class _NoWaitSelector(selectors.BaseSelector):
    """Registers the loop's self-pipe and never blocks: select() moves the fake clock."""

    def __init__(self, loop: "SimLoop") -> None:
        self._loop = loop
        self._map: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._map[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._map.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            self._loop.stop()  # nothing ready, no timer: the world has nothing left to do
        elif timeout > 0:
            self._loop.advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class SimLoop(asyncio.SelectorEventLoop):
    def __init__(self, on_task_error: Callable[[asyncio.Task[Any], BaseException], None]) -> None:
        self._now_ms = 0
        super().__init__(_NoWaitSelector(self))
        self._on_task_error = on_task_error
        self.set_task_factory(self._make_task)  # type: ignore[arg-type]

    def time(self) -> float:
        return self._now_ms / 1000.0

    @property
    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, timeout_s: float) -> None:
        # whole milliseconds: every delay in the product and the simulation is a multiple of one
        self._now_ms += max(1, math.ceil(timeout_s * 1000.0 - 1e-6))

    def _make_task(self, loop: asyncio.AbstractEventLoop, coro: Any,
                   context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        owner = OWNER.get() if context is None else context.get(OWNER)
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
        if owner is not None:
            if not owner.alive:
                task.cancel()  # a dead process starts nothing
            else:
                owner.tasks[task] = None
                task.add_done_callback(lambda t: owner.tasks.pop(t, None))
        task.add_done_callback(self._check_task)
        return task

    def _check_task(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._on_task_error(task, task.exception())  # type: ignore[arg-type]
