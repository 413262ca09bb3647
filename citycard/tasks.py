"""Small asyncio helpers shared by the I/O shells."""

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable["asyncio.Task[Any] | None"]) -> None:
    """Cancel background tasks and wait until each has finished; their errors are dropped,
    since the caller is shutting them down."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)
