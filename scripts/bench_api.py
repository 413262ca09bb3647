"""Request rates of the card-services HTTP API: balance query and top-up.

    .venv/bin/python scripts/bench_api.py --runs 3 --concurrency 32 --seconds 10

Brings up the platform as ``citycard up`` does (embedded Postgres and Redis by default;
CITYCARD_DATABASE_URL / CITYCARD_REDIS_URL for configured ones; a local Ray) in a schema of its
own (``bench_api``, dropped before and after), makes a clerk token and ``--cards`` cards through the API,
then measures, ``--runs`` times in turn:

- ``GET /cards/{no}/balance``: asks the card's AccountShard actor;
- ``POST /cards/{no}/topups`` of 1 fen with a unique idempotency key: applied by the shard,
  journaled durably in Postgres before the answer, and written to the audit log.

The load comes from a separate process (async httpx, ``--concurrency`` requests in flight on
as many connections, closed loop), each measurement bounded by ``--seconds`` and
``--max-requests``. "API CPU" is this process's CPU time per request: the HTTP server and its
Ray driver (the shards' own work is in their processes). A
request counts if it got a 200. Afterwards every card's balance is read back: it must equal
the opening top-up plus 1 fen per counted top-up. Prints a table (median of the runs, min,
max) and, with --json, the raw figures.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCHEMA = "bench_api"
OPENING_FEN = 10_000


# -- the load: a separate process --------------------------------------------------------------

async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    cards: list[int] = spec["cards"]
    conc, endpoint, tag = spec["concurrency"], spec["endpoint"], spec["tag"]
    deadline_s, max_requests = spec["seconds"], spec["max_requests"]
    headers = {"Authorization": f"Bearer {spec['token']}"}
    latencies_ms: list[float] = []
    statuses: dict[int, int] = {}
    topped: dict[int, int] = {}
    issued = 0
    # One client (one connection) per worker: httpx's pool costs more CPU per request the more
    # connections share it (~0.7 ms per request alone, ~3 ms at 32 shared, measured here)
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=spec["base_url"], headers=headers, timeout=30, limits=one)
               for _ in range(conc)]
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        end = t0 + deadline_s

        async def worker(w: int) -> None:
            nonlocal issued
            http = clients[w]
            i = 0
            while issued < max_requests and time.perf_counter() < end:
                issued += 1
                card = cards[(w * 7919 + i) % len(cards)]
                s = time.perf_counter()
                if endpoint == "balance":
                    r = await http.get(f"/cards/{card}/balance")
                else:
                    r = await http.post(f"/cards/{card}/topups", json={
                        "amount_fen": 1, "idempotency_key": f"{tag}-{w}-{i}"})
                latencies_ms.append((time.perf_counter() - s) * 1000)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if endpoint == "topup" and r.status_code == 200 and not r.json()["replay"]:
                    topped[card] = topped.get(card, 0) + 1
                i += 1

        await asyncio.gather(*(worker(w) for w in range(conc)))
        elapsed = time.perf_counter() - t0
        client_cpu_s = time.process_time() - cpu0
    finally:
        for c in clients:
            await c.aclose()
    ok = statuses.get(200, 0)
    lat = sorted(latencies_ms)
    return {"endpoint": endpoint, "ok": ok, "statuses": statuses, "elapsed_s": elapsed,
            "rate": ok / elapsed, "p50_ms": lat[len(lat) // 2] if lat else 0.0,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0,
            "client_cpu_ms": client_cpu_s * 1000 / max(1, len(lat)),
            "topped": {str(k): v for k, v in topped.items()}}


def client_main(load: Any = None) -> int:
    """The load process: a spec in on stdin, the figures out as JSON."""
    import uvloop

    spec = json.loads(sys.stdin.read())
    print(json.dumps(uvloop.run((load or _load)(spec))))
    return 0


def measure(spec: dict[str, Any], script: str = __file__, slack_s: float = 120) -> dict[str, Any]:
    """One measurement by ``script --client`` in a process of its own."""
    out = subprocess.run([sys.executable, script, "--client"], input=json.dumps(spec), capture_output=True,
                         text=True, timeout=spec["seconds"] + slack_s)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# -- the platform ------------------------------------------------------------------------------

async def _make_cards(base_url: str, token: str, n: int) -> list[int]:
    import httpx

    from citycard.domain.identity import make_citizen_id

    sem = asyncio.Semaphore(16)

    async def one(http: httpx.AsyncClient, k: int) -> int:
        born = date(1960, 1, 1) + timedelta(days=k // 1000)
        async with sem:
            r = await http.post("/holders", json={"citizen_id": make_citizen_id(330106, born, k % 1000),
                                                  "name": f"Bench {k}", "birth_date": born.isoformat()})
            r.raise_for_status()
            r = await http.post(f"/holders/{r.json()['holder_id']}/cards", json={})
            r.raise_for_status()
            card = int(r.json()["card_no"])
            r = await http.post(f"/cards/{card}/topups", json={"amount_fen": OPENING_FEN, "idempotency_key": "open"})
            r.raise_for_status()
            return card

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60) as http:
        return list(await asyncio.gather(*(one(http, k) for k in range(n))))


async def _balances(base_url: str, token: str, cards: list[int]) -> dict[int, int]:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60) as http:
        out = {}
        for card in cards:
            r = await http.get(f"/cards/{card}/balance")
            r.raise_for_status()
            out[card] = int(r.json()["purses"]["epurse"])
        return out


@dataclass(frozen=True)
class BenchPlatform:
    settings: Any
    services: str  # "embedded" or "configured"
    token: str
    base_url: str


@asynccontextmanager
async def bench_platform(schema: str, api: dict[str, Any] | None = None) -> AsyncIterator[BenchPlatform]:
    """The platform as ``citycard up`` runs it, in a schema of its own (dropped before and
    after), with a clerk token; torn down, Ray included, on the way out."""
    from citycard.api.auth import Role, create_token
    from citycard.cli.runtime import Platform
    from citycard.cli.services import resolve_services
    from citycard.config.settings import load_settings
    from citycard.persistence import db
    from citycard.persistence.db import drop_schema

    settings = load_settings(None, overrides={"database": {"schema": schema}, "redis": {"prefix": schema},
                                              "ray": {"namespace": schema}, "api": api or {}})
    services = resolve_services(settings)
    platform = Platform(settings, services)
    try:
        await drop_schema(services.db_url, schema)
        await platform.start(gateway_port=0, metrics_port=0, api_port=0)
        conn = await db.connect(services.db_url, schema)
        try:
            token = await create_token(conn, "bench", [Role.CLERK])
        finally:
            await conn.close()
        yield BenchPlatform(settings, "embedded" if services.embedded else "configured", token,
                            f"http://127.0.0.1:{platform.api_port}")
    finally:
        await platform.stop()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        await _drop(services.db_url, services.redis_url, schema)  # leave nothing in a shared database
        services.stop()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    async with bench_platform(SCHEMA) as bp:
        settings, token, base_url = bp.settings, bp.token, bp.base_url
        t0 = time.perf_counter()
        cards = await _make_cards(base_url, token, args.cards)
        print(f"platform up ({bp.services} services, "
              f"{settings.city.account_shards} account shards); {len(cards)} cards made through the API in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

        def spec(endpoint: str, tag: str, seconds: float) -> dict[str, Any]:
            return {"base_url": base_url, "token": token, "cards": cards, "endpoint": endpoint, "tag": tag,
                    "concurrency": args.concurrency, "seconds": seconds, "max_requests": args.max_requests}

        topups: list[dict[str, Any]] = []  # every top-up measurement, the warm-up's too
        for endpoint in ("balance", "topup"):  # warm-up: connections, token cache, code paths
            r = await asyncio.to_thread(measure, spec(endpoint, "warm", 1.0))
            topups += [r] if endpoint == "topup" else []
        results: dict[str, list[dict[str, Any]]] = {"balance": [], "topup": []}
        for run in range(1, args.runs + 1):
            for endpoint in ("balance", "topup"):
                cpu0 = time.process_time()  # this process: the API server (and its Ray driver)
                r = await asyncio.to_thread(measure, spec(endpoint, f"run{run}", args.seconds))
                r["api_cpu_ms"] = (time.process_time() - cpu0) * 1000 / max(1, sum(r["statuses"].values()))
                results[endpoint].append(r)
                topups += [r] if endpoint == "topup" else []
                print(f"run {run} {endpoint:8s}: {r['rate']:8,.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                      f"p99 {r['p99_ms']:6.1f} ms  API CPU {r['api_cpu_ms']:.2f} ms/req  client CPU {r['client_cpu_ms']:.2f} ms/req  statuses {r['statuses']}",
                      file=sys.stderr, flush=True)

        # money check: each card holds its opening top-up plus 1 fen per top-up answered 200
        expected = dict.fromkeys(cards, OPENING_FEN)
        for r in topups:
            for card, n in r["topped"].items():
                expected[int(card)] += n
        money_ok = await _balances(base_url, token, cards) == expected
        return {"results": results, "money_ok": money_ok, "cards": len(cards),
                "concurrency": args.concurrency, "seconds": args.seconds,
                "services": bp.services, "account_shards": settings.city.account_shards}


async def _drop(db_url: str, redis_url: str, schema: str = SCHEMA) -> None:
    import redis.asyncio as aioredis

    from citycard.persistence.db import drop_schema

    await drop_schema(db_url, schema)
    r = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{schema}:*")]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


def main() -> int:
    if "--client" in sys.argv:
        return client_main()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--seconds", type=float, default=10.0, help="time bound of one measurement")
    p.add_argument("--max-requests", type=int, default=50_000, help="count bound of one measurement")
    p.add_argument("--cards", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import uvloop

    out = uvloop.run(bench(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if out["money_ok"] else 1

    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}, {max(xs):,.0f})"

    print(f"\n{out['services']} services, {out['account_shards']} account shards, {out['cards']} cards, "
          f"concurrency {out['concurrency']}, {out['seconds']:g} s per run, {args.runs} runs")
    print(f"{'request':24s} | {'req/s median (min, max)':24s} | p50 ms | p99 ms | API CPU ms/req | not 200")
    for endpoint, label in (("balance", "GET /cards/{no}/balance"), ("topup", "POST /cards/{no}/topups")):
        rs = out["results"][endpoint]
        bad = sum(n for r in rs for s, n in r["statuses"].items() if int(s) != 200)
        print(f"{label:24s} | {fmt([r['rate'] for r in rs]):24s} | {statistics.median(r['p50_ms'] for r in rs):6.1f} "
              f"| {statistics.median(r['p99_ms'] for r in rs):6.1f} | {statistics.median(r['api_cpu_ms'] for r in rs):14.2f} "
              f"| {bad}")
    print(f"money check (every counted top-up on its card, nothing else): {'OK' if out['money_ok'] else 'FAILED'}")
    return 0 if out["money_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
