"""Self-service logins (the PIN check a holder makes) per second, and an honest holder's latency
under a wrong-PIN flood from one client.

    .venv/bin/python scripts/bench_selfservice.py --runs 3 --seconds 10

Brings up the platform as ``citycard up`` does (embedded Postgres and Redis by default;
CITYCARD_DATABASE_URL / CITYCARD_REDIS_URL for configured ones; local Ray) in a schema of its
own (``bench_self``, dropped before and after), with the production PIN cost (scrypt n=16384)
and the API trusting 127.0.0.1 as its reverse proxy, so that the load can speak for many
sources through X-Forwarded-For. Makes ``--cards`` holders with cards and PINs through the API.
Then, ``--runs`` times in turn, each bounded by ``--seconds`` and a request count:

- ``alone``: ``--holders`` honest holders (one source each, closed loop) log in with their
  card number, identity number and right PIN (``POST /self/session``);
- ``flood``: the same, while one client (one source) keeps ``--flood`` wrong-PIN logins in
  flight over every card, as a stranger walking card numbers would.

With ``--lift-failure-limits`` the limits on failed logins are lifted, so that only the
per-source share of the PIN-check gate stands between the flood and the holders. The load runs
in separate processes (the holders', the flood's). "Per core": the API checks PINs on ``cores/2`` KDF threads (one here).
Prints a table (median of the runs, min, max) and, with --json, the raw figures.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SCHEMA = "bench_self"
PIN, WRONG_ID = "482913", "11010119800101001X"
FLOOD_SOURCE = "198.51.100.66"


def citizen_id_of(k: int) -> str:
    """The identity number bench_api._make_cards gave holder ``k``."""
    from citycard.domain.identity import make_citizen_id

    return make_citizen_id(330106, date(1960, 1, 1) + timedelta(days=k // 1000), k % 1000)


# -- the load: a separate process --------------------------------------------------------------

def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else 0.0


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    cards: list[list[Any]] = spec["cards"]  # [card_no, citizen_id]
    end = time.perf_counter() + spec["seconds"]
    max_requests = spec["max_requests"]
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    honest_ms: list[float] = []
    honest: dict[int, int] = {}
    flood: dict[int, int] = {}
    issued = 0

    async def holder(w: int) -> None:
        nonlocal issued
        card_no, citizen_id = cards[w % len(cards)]
        headers = {"X-Forwarded-For": f"192.0.2.{w % 250 + 1}"}
        async with httpx.AsyncClient(base_url=spec["base_url"], timeout=60, limits=one) as http:
            while issued < max_requests and time.perf_counter() < end:
                issued += 1
                s = time.perf_counter()
                r = await http.post("/self/session", headers=headers,
                                    json={"card_no": card_no, "citizen_id": citizen_id, "pin": PIN})
                honest_ms.append((time.perf_counter() - s) * 1000)
                honest[r.status_code] = honest.get(r.status_code, 0) + 1

    async def flooder(w: int) -> None:
        nonlocal issued
        async with httpx.AsyncClient(base_url=spec["base_url"], timeout=60, limits=one) as http:
            i = 0
            while issued < max_requests and time.perf_counter() < end:
                issued += 1
                card_no = cards[(w * 31 + i) % len(cards)][0]
                r = await http.post("/self/session", headers={"X-Forwarded-For": FLOOD_SOURCE},
                                    json={"card_no": card_no, "citizen_id": WRONG_ID, "pin": f"{(w * 1000 + i) % 10**6:06d}"})
                flood[r.status_code] = flood.get(r.status_code, 0) + 1
                i += 1
                if r.status_code == 429:  # a real flooder would not wait: neither does this one
                    await asyncio.sleep(0)

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(holder(w) for w in range(spec["holders"])),
                         *(flooder(w) for w in range(spec["flood"])))
    elapsed = time.perf_counter() - t0
    return {"elapsed_s": elapsed, "honest": honest, "flood": flood,
            "client_cpu_share": (time.process_time() - cpu0) / elapsed,  # of one core
            "logins_per_s": honest.get(201, 0) / elapsed,
            "p50_ms": _pct(honest_ms, 0.50), "p99_ms": _pct(honest_ms, 0.99), "max_ms": max(honest_ms, default=0.0)}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from bench_api import measure as measure_in_process

    return measure_in_process(spec, __file__, slack_s=180)


# -- the platform ------------------------------------------------------------------------------

async def _set_pins(base_url: str, token: str, cards: list[int]) -> None:
    import httpx

    sem = asyncio.Semaphore(4)

    async def one(http: httpx.AsyncClient, card: int) -> None:
        async with sem:
            r = await http.put(f"/cards/{card}/pin", json={"pin": PIN})
            r.raise_for_status()

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60) as http:
        await asyncio.gather(*(one(http, c) for c in cards))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from bench_api import _make_cards, bench_platform

    from citycard.api.context import KDF_WORKERS

    api: dict[str, Any] = {"trusted_proxies": ["127.0.0.1/32"]}
    if args.lift_failure_limits:
        api |= {"login_failures_per_source": "1000000/minute", "login_failures_per_card": "1000000/minute"}
    async with bench_platform(SCHEMA, api) as bp:
        settings, token, base_url = bp.settings, bp.token, bp.base_url
        cards = await _make_cards(base_url, token, args.cards)
        await _set_pins(base_url, token, cards)
        pairs = [[c, citizen_id_of(k)] for k, c in enumerate(cards)]
        print(f"platform up ({bp.services} services, "
              f"{KDF_WORKERS} KDF thread(s), scrypt n={settings.api.pin_kdf_n}); {len(cards)} cards with PINs",
              file=sys.stderr, flush=True)

        def spec(holders: int, flood: int, seconds: float) -> dict[str, Any]:
            return {"base_url": base_url, "cards": pairs, "holders": holders, "flood": flood,
                    "seconds": seconds, "max_requests": args.max_requests}

        async def measure_both(flood: int, seconds: float) -> dict[str, Any]:
            """The holders and the flood from processes of their own: no queue on one client's
            event loop counts as the server's latency."""
            if not flood:
                return await asyncio.to_thread(measure, spec(args.holders, 0, seconds))
            held, flooded = await asyncio.gather(asyncio.to_thread(measure, spec(args.holders, 0, seconds)),
                                                 asyncio.to_thread(measure, spec(0, flood, seconds)))
            return {**held, "flood": flooded["flood"], "flood_cpu_share": flooded["client_cpu_share"]}

        await measure_both(0, 1.0)  # warm-up: connections, code paths
        results: dict[str, list[dict[str, Any]]] = {"alone": [], "flood": []}
        for run in range(1, args.runs + 1):
            for mode, flood in (("alone", 0), ("flood", args.flood)):
                cpu0 = time.process_time()  # this process: the API server, its KDF threads, its Ray driver
                r = await measure_both(flood, args.seconds)
                answers = sum(r["honest"].values()) + sum(r["flood"].values())
                r["api_cpu_ms"] = (time.process_time() - cpu0) * 1000 / max(1, answers)
                r["api_cpu_ms_per_login"] = (time.process_time() - cpu0) * 1000 / max(1, r["honest"].get("201", 1))
                results[mode].append(r)
                print(f"run {run} {mode:5s}: {r['logins_per_s']:6.1f} logins/s  p50 {r['p50_ms']:7.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  holders {r['honest']}  flood {r['flood']}  "
                      f"API CPU {r['api_cpu_ms']:.2f} ms/answer  flood client {r.get('flood_cpu_share', 0):.0%} of a core",
                      file=sys.stderr, flush=True)
        return {"results": results, "kdf_threads": KDF_WORKERS, "holders": args.holders, "flood": args.flood,
                "seconds": args.seconds, "lifted": args.lift_failure_limits,
                "services": bp.services}


def main() -> int:
    if "--client" in sys.argv:
        from bench_api import client_main

        return client_main(_load)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="time bound of one measurement")
    p.add_argument("--max-requests", type=int, default=200_000, help="count bound of one measurement")
    p.add_argument("--cards", type=int, default=200)
    p.add_argument("--holders", type=int, default=8, help="honest holders logging in, one source each")
    p.add_argument("--flood", type=int, default=70, help="wrong-PIN logins the flooding client keeps in flight")
    p.add_argument("--lift-failure-limits", action="store_true",
                   help="lift the limits on failed logins: only the gate's per-source share holds the flood")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import uvloop

    out = uvloop.run(bench(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def fmt(xs: list[float], f: str = ",.1f") -> str:
        return f"{statistics.median(xs):{f}} ({min(xs):{f}}, {max(xs):{f}})"

    print(f"\n{out['services']} services, {out['kdf_threads']} KDF thread(s), {out['holders']} honest holders, "
          f"flood {out['flood']} in flight from one source{' (failure limits lifted)' if out['lifted'] else ''}, "
          f"{out['seconds']:g} s per run, {args.runs} runs")
    print("mode  | holders' logins/s median (min, max) | p50 ms | p99 ms median (min, max) | API CPU ms per login "
          "| holders' answers | flood's answers")
    for mode, rs in out["results"].items():
        honest = {k: sum(r["honest"].get(k, 0) for r in rs) for k in sorted({k for r in rs for k in r["honest"]})}
        flood = {k: sum(r["flood"].get(k, 0) for r in rs) for k in sorted({k for r in rs for k in r["flood"]})}
        print(f"{mode:5s} | {fmt([r['logins_per_s'] for r in rs]):35s} | "
              f"{statistics.median(r['p50_ms'] for r in rs):6.1f} | {fmt([r['p99_ms'] for r in rs]):24s} | "
              f"{statistics.median(r['api_cpu_ms_per_login'] for r in rs):20.1f} | {honest} | {flood}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
