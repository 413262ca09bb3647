"""``GET /health/live`` and ``GET /health/ready``: what an orchestrator polls.

Live: the process answers HTTP (no dependency is asked, so a Postgres outage never gets the
platform restarted). Ready: Postgres answers ``SELECT 1``, Redis ``PING`` and every account
shard says it is loaded, Postgres and Redis each within ``CHECK_TIMEOUT_S``, the shards within
``SHARD_TIMEOUT_S`` (the metrics watch's bound: a shard saturated by taps takes over 2 s to
answer a probe, and a serving gateway must not be pulled for that). A poller may ask as often as it
likes: one answer is kept ``CACHE_S`` and concurrent requests share the check in progress
(single flight), so the shards see at most one small Ray call each per ``CACHE_S``.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .health import CHECK_TIMEOUT_S, _check

CACHE_S = 1.0
SHARD_TIMEOUT_S = 4.0


class Readiness:
    """The last readiness answer, kept ``cache_s``; at most one check at a time."""

    def __init__(self, pool: Any, redis: Any, shards: Any, *, cache_s: float = CACHE_S,
                 timeout_s: float = CHECK_TIMEOUT_S, shard_timeout_s: float = SHARD_TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool, self.redis, self.shards = pool, redis, shards
        self.cache_s, self.timeout_s, self.clock = cache_s, timeout_s, clock
        self.shard_timeout_s = shard_timeout_s
        self.checks = 0  # how many checks ran (tests hold the single flight to it)
        self._answer: dict[str, Any] | None = None
        self._at = 0.0
        self._inflight: asyncio.Future[dict[str, Any]] | None = None

    async def answer(self) -> dict[str, Any]:
        if self._answer is not None and self.clock() - self._at < self.cache_s:
            return self._answer
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._run())
        # shielded: one caller hanging up must not cancel the check the others wait on
        return await asyncio.shield(self._inflight)

    async def _run(self) -> dict[str, Any]:
        try:
            self.checks += 1
            answer = await self._check_all()
            self._answer, self._at = answer, self.clock()
            return answer
        finally:
            self._inflight = None

    async def _check_all(self) -> dict[str, Any]:
        probes: list[Awaitable[Any]] = [
            _check(lambda: self.pool.fetchval("SELECT 1"), self.timeout_s),
            _check(self.redis.ping, self.timeout_s),
            self.shards.readiness(self.shard_timeout_s),
        ]
        postgres, redis_state, shard_states = await asyncio.gather(*probes)
        components: dict[str, str] = {"postgres": postgres, "redis": redis_state}
        components.update({f"shard {i}": state for i, state in enumerate(shard_states)})
        not_ready = [name for name, state in components.items() if state != "ok"]
        return {"status": "ready" if not not_ready else "not ready", "not_ready": not_ready,
                "components": components}


__all__ = ["CACHE_S", "SHARD_TIMEOUT_S", "Readiness"]
