"""Bounded waits: retry a call until a restarting part answers, poll until something holds."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


async def until_available(call: Callable[[], Awaitable[Any]], timeout_s: float = 30.0) -> Any:
    """Call (e.g. a Ray actor method) until the restarting part answers; its last error after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def within(predicate: Callable[[], bool], timeout_s: float, *, started: float | None = None,
                 poll_s: float = 0.005) -> float:
    """Seconds from ``started`` (perf_counter; default now) until predicate() held; fails the
    test if it does not hold within timeout_s of this call."""
    now = time.perf_counter()
    started = now if started is None else started
    deadline = now + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            pytest.fail(f"not within {timeout_s} s")
        await asyncio.sleep(poll_s)
    return time.perf_counter() - started
