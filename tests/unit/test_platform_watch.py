"""The platform watch turns probe answers into the gauges and counters operators alert on
(fake probes here; tests/e2e/test_prometheus_scrape.py runs it over a real platform)."""

import asyncio
import os
from pathlib import Path

import httpx

from citycard.actors.account_shard import AccountShardCore
from citycard.api.http_metrics import HttpMetrics
from citycard.config.fare_table import shipped_tables
from citycard.config.settings import load_settings
from citycard.gateway.metrics import Metrics
from citycard.gateway.watch import PlatformWatch
from tests.support.shard_store import GatedStore


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


class Shard:
    """A shard's probe() answers, changed by the test between polls."""

    def __init__(self, shard_id: int) -> None:
        self.answer = {"shard_id": shard_id, "ready": True, "loads": 1, "mismatches": 0, "pid": 100 + shard_id,
                       "rss_bytes": 50_000_000, "cpu_s": 2.0}
        self.fail: BaseException | None = None
        self.slow_s = 0.0

    async def __call__(self) -> dict:
        await asyncio.sleep(self.slow_s)
        if self.fail is not None:
            raise self.fail
        return dict(self.answer)


async def ok() -> None:
    return None


async def refused() -> None:
    raise ConnectionRefusedError("down")


def test_shard_probes_become_up_ready_restarts_reloads_cpu_and_memory(tmp_path: Path) -> None:
    m = Metrics()
    shards = [Shard(0), Shard(1)]
    watch = PlatformWatch(m.watch, probes=shards, check_postgres=ok, check_redis=refused,
                          state_dir=tmp_path / "not" / "made", timeout_s=0.2)

    async def scenario() -> None:
        await watch.poll_once()
        assert value(m, "citycard_postgres_up") == 1 and value(m, "citycard_redis_up") == 0
        for s in ("0", "1"):
            assert value(m, "citycard_shard_up", shard=s) == 1
            assert value(m, "citycard_shard_ready", shard=s) == 1
            assert value(m, "citycard_shard_restarts_total", shard=s) == 0
            assert value(m, "citycard_shard_cpu_seconds_total", shard=s) == 2.0
            assert value(m, "citycard_shard_resident_memory_bytes", shard=s) == 50_000_000
        assert value(m, "citycard_shard_reloads_total", shard="0") is None  # the first load is no reload

        shards[0].answer.update(cpu_s=3.5, loads=2, ready=False, mismatches=4)  # reloading, same process
        shards[1].slow_s = 1.0  # no answer in time
        await watch.poll_once()
        assert value(m, "citycard_shard_cpu_seconds_total", shard="0") == 3.5
        assert value(m, "citycard_shard_reloads_total", shard="0") == 1
        assert value(m, "citycard_shard_ready", shard="0") == 0 and value(m, "citycard_shard_up", shard="0") == 1
        assert value(m, "citycard_shard_recovery_mismatches", shard="0") == 4
        assert value(m, "citycard_shard_up", shard="1") == 0 and value(m, "citycard_shard_ready", shard="1") == 0

        shards[0].answer.update(pid=999, cpu_s=0.5, loads=1, ready=True)  # Ray restarted it
        shards[1].slow_s, shards[1].fail = 0.0, RuntimeError("actor died")
        await watch.poll_once()
        assert value(m, "citycard_shard_restarts_total", shard="0") == 1
        assert value(m, "citycard_shard_reloads_total", shard="0") == 2
        assert value(m, "citycard_shard_cpu_seconds_total", shard="0") == 4.0  # a counter: never back
        assert value(m, "citycard_shard_up", shard="1") == 0
        assert watch.polls == 3

    asyncio.run(scenario())
    free, size = value(m, "citycard_state_free_bytes"), value(m, "citycard_state_size_bytes")
    assert free is not None and size is not None and 0 < free <= size  # from the nearest existing parent


def test_watch_runs_in_the_background_and_stops(tmp_path: Path) -> None:
    m = Metrics()

    async def scenario() -> int:
        watch = PlatformWatch(m.watch, probes=[Shard(0)], check_postgres=refused, check_redis=ok,
                              state_dir=tmp_path, interval_s=0.01, timeout_s=0.2)
        watch.start()
        for _ in range(200):
            if watch.polls >= 3:
                break
            await asyncio.sleep(0.01)
        await watch.stop()
        return watch.polls

    assert asyncio.run(scenario()) >= 3
    assert value(m, "citycard_postgres_up") == 0 and value(m, "citycard_redis_up") == 1


def test_http_requests_are_counted_by_route_template_method_and_status() -> None:
    from fastapi import FastAPI

    m = Metrics()
    app = FastAPI()

    @app.get("/cards/{card_no}")
    async def card(card_no: int) -> dict:
        return {"card_no": card_no}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(HttpMetrics, metrics=m)

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return [(await http.request(method, path)).status_code for method, path in
                    [("GET", "/cards/5"), ("GET", "/cards/6"), ("GET", "/cards/x"), ("GET", "/nope"),
                     ("GET", "/boom"), ("BREW", "/cards/5")]]

    assert asyncio.run(scenario()) == [200, 200, 422, 404, 500, 405]
    req = "citycard_http_requests_total"
    assert value(m, req, route="/cards/{card_no}", method="GET", status="200") == 2
    assert value(m, req, route="/cards/{card_no}", method="GET", status="422") == 1
    assert value(m, req, route="unmatched", method="GET", status="404") == 1
    assert value(m, req, route="/boom", method="GET", status="500") == 1
    assert value(m, req, route="/cards/{card_no}", method="other", status="405") == 1
    assert value(m, "citycard_http_request_duration_seconds_count", route="/cards/{card_no}", method="GET") == 3


def test_a_shard_probe_answers_at_once_starts_a_load_and_counts_it() -> None:
    async def scenario() -> tuple[dict, dict]:
        store = GatedStore()
        core = AccountShardCore(3, load_settings(env={}).as_dict(), store=store,  # type: ignore[arg-type]
                                tables=shipped_tables())
        during = await asyncio.wait_for(core.probe(), 1)  # answers at once, and starts the load
        assert core._loading is not None and not core._loading.done()
        store.release.set()
        for _ in range(100):  # the load ends with no tap or call waiting for it
            if core._ready.is_set():
                break
            await asyncio.sleep(0.01)
        after = await core.probe()
        await core.writer.close()  # type: ignore[union-attr]
        return during, after

    during, after = asyncio.run(scenario())
    assert during["ready"] is False and during["loads"] == 0 and during["shard_id"] == 3
    assert after["ready"] is True and after["loads"] == 1 and after["mismatches"] == 0
    assert after["pid"] == os.getpid() and after["rss_bytes"] > 10 * 2**20 and after["cpu_s"] > 0


class HungPostgres:
    """An asyncpg connection to a server that stopped answering after the connect: a query and
    a close without a timeout never end; a close with one gives up then (as asyncpg's does)."""

    def __init__(self) -> None:
        self.close_timeouts: list[float | None] = []
        self.terminated = False

    async def fetchval(self, _sql: str) -> int:
        await asyncio.sleep(3600)
        return 1

    async def close(self, *, timeout: float | None = None) -> None:
        self.close_timeouts.append(timeout)
        await asyncio.sleep(3600 if timeout is None else timeout)
        raise TimeoutError

    def terminate(self) -> None:
        self.terminated = True


def test_a_hung_postgres_reads_as_down_within_the_bound(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from citycard.cli import runtime

    conn = HungPostgres()

    async def connect(_url: str, _schema: str) -> HungPostgres:
        return conn

    monkeypatch.setattr(runtime.db, "connect", connect)
    settings = load_settings(env={})
    platform = runtime.Platform(settings, SimpleNamespace(app_url=lambda _s: "postgresql://hung/test"))
    m = Metrics()
    m.watch.postgres_up.set(1)  # it was up
    watch = PlatformWatch(m.watch, probes=[], check_postgres=platform._check_postgres, check_redis=ok,
                          state_dir=tmp_path, timeout_s=0.2)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with asyncio.timeout(10):  # the bug: the poll never ended
            await watch.poll_once()
        return loop.time() - t0

    took_s = asyncio.run(scenario())
    assert took_s < 0.2 + runtime.PG_CLOSE_TIMEOUT_S + 1.0, took_s
    assert value(m, "citycard_postgres_up") == 0 and watch.polls == 1
    assert conn.close_timeouts == [runtime.PG_CLOSE_TIMEOUT_S] and conn.terminated
