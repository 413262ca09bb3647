"""GET /health's verdict from its two probes (fakes for Postgres and Redis: the route's own
wiring is exercised over real services by tests/e2e/test_strict_input.py)."""

import asyncio
import json

import pytest

from citycard.api import health as health_mod


class Pool:
    def __init__(self, fail: bool = False, slow_s: float = 0.0) -> None:
        self.fail, self.slow_s = fail, slow_s

    async def fetchval(self, sql: str) -> int:
        await asyncio.sleep(self.slow_s)
        if self.fail:
            raise ConnectionRefusedError("no Postgres")
        return 1


class Redis:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def ping(self) -> bool:
        if self.fail:
            raise ConnectionError("no Redis")
        return True


def _ask(pool: Pool, redis: Redis) -> tuple[int, dict[str, str]]:
    r = asyncio.run(health_mod.health(pool, redis))
    return r.status_code, json.loads(r.body)


def test_both_up_is_ok() -> None:
    assert _ask(Pool(), Redis()) == (200, {"status": "ok", "postgres": "ok", "redis": "ok"})


def test_redis_down_is_degraded_but_serving() -> None:
    status, body = _ask(Pool(), Redis(fail=True))
    assert status == 200 and body["status"] == "degraded" and body["redis"].startswith("unreachable")


def test_postgres_down_is_503_with_the_one_error_shape() -> None:
    status, body = _ask(Pool(fail=True), Redis())
    assert status == 503 and body["status"] == "unavailable" and body["postgres"].startswith("unreachable")
    assert body["error"].startswith("Postgres:")


def test_a_postgres_that_hangs_is_503_within_the_check_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health_mod, "CHECK_TIMEOUT_S", 0.05)
    status, body = _ask(Pool(slow_s=1.0), Redis())
    assert status == 503 and body["postgres"] == "no answer in 0.05 s"
