"""Small asyncio helpers shared by the I/O shells."""

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable["asyncio.Task[Any] | None"]) -> None:
    """Cancel background tasks and wait until each has finished; their errors are dropped,
    since the caller is shutting them down."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)


def log_failure(log: logging.Logger, what: str) -> Callable[["asyncio.Task[Any]"], None]:
    """A done-callback that logs a task's unexpected exception (one nobody awaits would
    otherwise be lost until garbage collection); cancellation is not a failure."""

    def done(task: "asyncio.Task[Any]") -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed: %r", what, exc, exc_info=exc)

    return done


class Pacer:
    """Paces a long background job run in steps (a snapshot, a compaction) so that it takes at
    most about half of the process or backend it runs in, and taps go on between its steps:
    ``pause()`` sleeps as long as the work since the last pause took, and at least
    ``min_pause_s``. Made inside the running loop; its clock is the loop's."""

    def __init__(self, min_pause_s: float) -> None:
        self.min_pause_s = min_pause_s
        self._loop = asyncio.get_running_loop()
        self._mark_s = self._loop.time()

    async def pause(self) -> None:
        await asyncio.sleep(max(self.min_pause_s, self._loop.time() - self._mark_s))
        self._mark_s = self._loop.time()
