"""Failed checks allowed per source, per card and per token: moving windows kept in Redis by
the ``limits`` library, so every API process of a deployment counts together.

Each scope has tiers ("5/minute;20/hour"): the short one stops a burst, the long one is the
back-off for a caller who keeps failing. Only failures are counted; a caller over any tier is
refused before anything is checked, with the seconds until a try frees up.

A refusal is remembered in this process until that moment (no try can free up sooner), so a
flooding client's further requests cost no trip to Redis.
"""

import math
import time
from enum import StrEnum

import limits
import redis.asyncio as aioredis
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from .errors import RateLimited


class Scope(StrEnum):
    LOGIN_SOURCE = "login_source"  # failed self-service logins from one address
    LOGIN_CARD = "login_card"  # failed self-service logins to one card, from anywhere
    PIN_TOKEN = "pin_token"  # wrong PINs sent by one operator token


REFUSALS = {
    Scope.LOGIN_SOURCE: "too many failed logins from this address",
    Scope.LOGIN_CARD: "too many failed logins to this card",
    Scope.PIN_TOKEN: "too many wrong PINs from this token",
}


DENIED_CACHE_KEYS = 100_000  # refused callers remembered here; beyond it the oldest are forgotten


class Throttle:
    def __init__(self, redis: aioredis.Redis, prefix: str, tiers: dict[Scope, str]) -> None:
        # the URL is not used: the client comes from the platform's own pool
        storage = RedisStorage("async+redis://pooled:6379", implementation="redispy",
                               key_prefix=f"{prefix}:limits",
                               connection_pool=redis.connection_pool)  # type: ignore[arg-type]  # typed too narrowly
        self._limiter = MovingWindowRateLimiter(storage)
        self._tiers = {scope: limits.parse_many(text) for scope, text in tiers.items()}
        self._denied: dict[tuple[Scope, str], float] = {}  # (scope, key) -> refused until (epoch s)

    def _refusal(self, scope: Scope, until_s: float) -> RateLimited:
        wait_s = max(1, math.ceil(until_s - time.time()))
        return RateLimited(f"{REFUSALS[scope]}: retry in {wait_s} s", wait_s, reason=scope.value)

    async def check(self, scope: Scope, key: str) -> None:
        """RateLimited when ``key`` has no failure left in some tier of ``scope``."""
        until_s = self._denied.get((scope, key))
        if until_s is not None:
            if until_s > time.time():
                raise self._refusal(scope, until_s)
            del self._denied[(scope, key)]
        for tier in self._tiers[scope]:
            if not await self._limiter.test(tier, scope, key):
                stats = await self._limiter.get_window_stats(tier, scope, key)
                if len(self._denied) >= DENIED_CACHE_KEYS:
                    del self._denied[next(iter(self._denied))]
                self._denied[(scope, key)] = stats.reset_time
                raise self._refusal(scope, stats.reset_time)

    async def failed(self, scope: Scope, key: str) -> None:
        for tier in self._tiers[scope]:
            await self._limiter.hit(tier, scope, key)
