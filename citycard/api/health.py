"""``GET /health``: what a load balancer and an on-call engineer ask. Postgres answers a
``SELECT 1`` and Redis a ``PING``, each within ``CHECK_TIMEOUT_S``. Postgres down: 503 (no
write can be durable). Redis down: 200 and ``degraded`` (Redis holds nothing Postgres cannot
rebuild; token revocations and login throttles wait for it)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse

CHECK_TIMEOUT_S = 2.0


async def _check(probe: Callable[[], Awaitable[Any]], timeout_s: float | None = None) -> str:
    timeout_s = CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            await probe()
    except TimeoutError:
        return f"no answer in {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer: it is down
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def health(pool: Any, redis: Any) -> JSONResponse:
    postgres, redis_state = await asyncio.gather(_check(lambda: pool.fetchval("SELECT 1")), _check(redis.ping))
    body: dict[str, str] = {"postgres": postgres, "redis": redis_state}
    if postgres != "ok":
        body = {"status": "unavailable", "error": f"Postgres: {postgres}", **body}
        return JSONResponse(body, status_code=503)
    body = {"status": "ok" if redis_state == "ok" else "degraded", **body}
    return JSONResponse(body)


__all__ = ["CHECK_TIMEOUT_S", "health"]
