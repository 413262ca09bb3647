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
