"""GET /health/ready's verdict, cache and single flight, over a real ShardClient whose actors
are fakes (the route over real services: tests/e2e/test_health_ready.py)."""

import asyncio

from citycard.actors.shard_client import CallPolicy, ShardClient
from citycard.api.readiness import Readiness


class Pool:
    def __init__(self) -> None:
        self.calls = 0

    async def fetchval(self, sql: str) -> int:
        self.calls += 1
        await asyncio.sleep(0.01)
        return 1


class Redis:
    async def ping(self) -> bool:
        return True


class Method:
    def __init__(self, fn) -> None:  # noqa: ANN001
        self.remote = fn


class Shard:
    """Answers ``probe`` like AccountShard's Ray handle: ``.probe.remote()`` is awaitable."""

    def __init__(self, state: str = "ok", hang_s: float = 0.0, crash: bool = False) -> None:
        self.state, self.hang_s, self.crash, self.calls = state, hang_s, crash, 0

        async def probe() -> dict:
            self.calls += 1
            await asyncio.sleep(self.hang_s)
            if self.crash:
                raise RuntimeError("actor died")
            return {"shard_id": 0, "ready": self.state == "ok", "loads": 1}

        self.probe = Method(probe)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _readiness(*shards: Shard, clock: Clock | None = None, timeout_s: float = 2.0,
               shard_timeout_s: float | None = None) -> tuple[Readiness, Pool]:
    pool = Pool()
    client = ShardClient(list(shards), CallPolicy(1.0, 1.0))
    shard_timeout_s = timeout_s if shard_timeout_s is None else shard_timeout_s
    return Readiness(pool, Redis(), client, timeout_s=timeout_s, shard_timeout_s=shard_timeout_s,
                     clock=clock or Clock()), pool


def test_all_ok_is_ready_with_each_component_named() -> None:
    r, _ = _readiness(Shard(), Shard())
    body = asyncio.run(r.answer())
    assert body == {"status": "ready", "not_ready": [],
                    "components": {"postgres": "ok", "redis": "ok", "shard 0": "ok", "shard 1": "ok"}}


def test_a_shard_slower_than_the_database_bound_but_within_its_own_is_ready() -> None:
    # a shard saturated by taps answers a probe late; readiness must not pull a serving gateway
    r, _ = _readiness(Shard(hang_s=0.3), timeout_s=0.1, shard_timeout_s=1.0)
    assert asyncio.run(r.answer())["components"]["shard 0"] == "ok"
    assert Readiness(None, None, None).shard_timeout_s > Readiness(None, None, None).timeout_s


def test_a_loading_a_dead_and_a_hung_shard_are_each_named_within_the_timeout() -> None:
    r, _ = _readiness(Shard(), Shard("loading"), Shard(crash=True), Shard(hang_s=30), timeout_s=0.2)

    async def go() -> tuple[dict, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = await r.answer()
        return body, loop.time() - started

    body, took_s = asyncio.run(go())
    assert body["status"] == "not ready" and body["not_ready"] == ["shard 1", "shard 2", "shard 3"]
    c = body["components"]
    assert (c["shard 1"], c["shard 2"], c["shard 3"]) == ("loading", "unreachable: RuntimeError", "no answer in 0.2 s")
    assert took_s < 1.0


def test_concurrent_callers_share_one_check_and_an_answer_is_kept_one_second() -> None:
    clock = Clock()
    shard = Shard(hang_s=0.05)
    r, pool = _readiness(shard, clock=clock)

    async def go() -> None:
        answers = await asyncio.gather(*(r.answer() for _ in range(200)))
        assert all(a["status"] == "ready" for a in answers)
        assert (r.checks, shard.calls, pool.calls) == (1, 1, 1)
        clock.now += 0.9  # still fresh: no new check
        await r.answer()
        assert (r.checks, shard.calls) == (1, 1)
        clock.now += 0.2  # stale: one new check
        await asyncio.gather(*(r.answer() for _ in range(50)))
        assert (r.checks, shard.calls) == (2, 2)

    asyncio.run(go())


def test_a_caller_that_hangs_up_does_not_cancel_the_others_check() -> None:
    shard = Shard(hang_s=0.1)
    r, _ = _readiness(shard)

    async def go() -> None:
        first = asyncio.ensure_future(r.answer())
        second = asyncio.ensure_future(r.answer())
        await asyncio.sleep(0.02)
        first.cancel()
        assert (await second)["status"] == "ready"
        assert r.checks == 1

    asyncio.run(go())

