"""Failed checks allowed per source, per card and per token: moving windows kept in Redis by
the ``limits`` library, so every API process of a deployment counts together.

Each scope has tiers ("5/minute;20/hour"): the short one stops a burst, the long one is the
back-off for a caller who keeps failing. Only failures are counted; a caller over any tier is
refused before anything is checked, with the seconds until a try frees up.
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


class Throttle:
    def __init__(self, redis: aioredis.Redis, prefix: str, tiers: dict[Scope, str]) -> None:
        # the URL is not used: the client comes from the platform's own pool
        storage = RedisStorage("async+redis://pooled:6379", implementation="redispy",
                               key_prefix=f"{prefix}:limits",
                               connection_pool=redis.connection_pool)  # type: ignore[arg-type]  # typed too narrowly
        self._limiter = MovingWindowRateLimiter(storage)
        self._tiers = {scope: limits.parse_many(text) for scope, text in tiers.items()}

    async def check(self, scope: Scope, key: str) -> None:
        """RateLimited when ``key`` has no failure left in some tier of ``scope``."""
        for tier in self._tiers[scope]:
            if not await self._limiter.test(tier, scope, key):
                stats = await self._limiter.get_window_stats(tier, scope, key)
                wait_s = math.ceil(stats.reset_time - time.time())
                raise RateLimited(f"{REFUSALS[scope]}: retry in {max(wait_s, 1)} s", wait_s)

    async def failed(self, scope: Scope, key: str) -> None:
        for tier in self._tiers[scope]:
            await self._limiter.hit(tier, scope, key)
