"""Offline (city-pass) records: the host's decision rate per core, and durable uploads end to end.

    .venv/bin/python scripts/bench_offline.py --runs 3 --records 200000           # both parts
    .venv/bin/python scripts/bench_offline.py --only decide --runs 3              # pure, no services

``decide`` (one core, no I/O): what the gateway's offline desk does per record before the
commit, on records whose TACs are right: the TAC check (domain.offline_book.TacKeys) and the
decision (domain.offline_book.decide) against each card's shadow. Twice: ``warm`` (every
card's TAC key already in the LRU: a validator's cards seen before) and ``cold`` (a fresh LRU:
each card's key diversified once, 2 3DES operations, then its records).

``e2e``: brings up the platform as ``citycard up`` does (embedded Postgres and Redis by default;
CITYCARD_DATABASE_URL / CITYCARD_REDIS_URL for configured ones; local Ray) in a schema of its
own (``bench_offline``, dropped before and after), seeds ``--cards`` cards (loaded through the
host: their shadows hold 10 million fen) and ``--terminals`` terminals. A separate process then
connects every terminal to the gateway and uploads signed batches of ``--batch`` records
(``--inflight`` batches in flight per connection) until ``--records`` records are answered
or ``--seconds`` pass. A record counts once its ``offline_ack`` came (durable: committed).
Each run uses new counters; afterwards offline_records must hold exactly the records
answered ACCEPTED. Prints a table (median of the runs, min, max) and, with --json, the raw
figures.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SCHEMA = "bench_offline"
DEMO_ISSUER = ("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
               "F0E0D0C0B0A090807060504030201000")
LOADED_FEN = 10_000_000
AMOUNT_FEN = 2


# -- records with right TACs, made fast ----------------------------------------------------------

def make_records(issuer: Any, terminal_id: int, cards: list[int], n: int, first_counter: int) -> list[Any]:
    """``n`` purchases over ``cards`` round robin, counters from ``first_counter`` on, each with
    the card's right TAC (made with the same fast MAC the host checks with)."""
    from dataclasses import replace

    from citycard.domain.epurse_crypto import When, tac_key
    from citycard.domain.offline import OfflineRecord
    from citycard.domain.offline_book import _TacMac

    when = When.of("20261206", "081500")
    macs = {c: _TacMac(tac_key(issuer.dtk(c))) for c in cards}
    out = []
    for i in range(n):
        card = cards[i % len(cards)]
        counter = first_counter + i // len(cards)
        seq = (terminal_id * 1_000_003 + counter * len(cards) + i % len(cards)) % 2**32
        r = OfflineRecord(card, counter, AMOUNT_FEN, LOADED_FEN - AMOUNT_FEN * (counter + 1), 0x06, terminal_id, seq,
                          when, bytes(4), 1, 12)
        data = (AMOUNT_FEN.to_bytes(4, "big") + b"\x06" + terminal_id.to_bytes(6, "big") + seq.to_bytes(4, "big")
                + when.bcd() + b"\x80\x00")
        out.append(replace(r, tac=macs[card].tac(data)))
    return out


# -- part 1: the decision per core ---------------------------------------------------------------

def bench_decide(n_records: int, n_cards: int, runs: int) -> dict[str, Any]:
    from citycard.domain.offline import IssuerKeys
    from citycard.domain.offline_book import CardShadow, OfflineCode, TacKeys, decide

    issuer = IssuerKeys.of_hex(*DEMO_ISSUER)
    cards = [10**15 + 7 * i for i in range(n_cards)]
    records = make_records(issuer, 1001, cards, n_records, 0)
    out: dict[str, list[float]] = {"warm": [], "cold": []}
    warm_keys = TacKeys(issuer, max_cards=max(n_cards, 1))
    for r in records[:n_cards]:
        warm_keys.tac_ok(r)
    for run in range(runs):
        for mode in ("cold", "warm"):
            keys = TacKeys(issuer, max_cards=max(n_cards, 1)) if mode == "cold" else warm_keys
            shadows = {c: CardShadow(c, loaded_fen=LOADED_FEN) for c in cards}
            tac_ok = keys.tac_ok
            t0 = time.perf_counter()
            accepted = 0
            for r in records:
                d = decide(shadows[r.card_no], r, None, tac_ok(r))
                accepted += d.code is OfflineCode.ACCEPTED
            elapsed = time.perf_counter() - t0
            if accepted != len(records):
                raise RuntimeError(f"{mode}: {len(records) - accepted} records not accepted")
            out[mode].append(len(records) / elapsed)
            print(f"decide run {run + 1} {mode}: {len(records) / elapsed:,.0f} records/s", file=sys.stderr,
                  flush=True)
    return {"records": n_records, "cards": n_cards, "rates": out}


# -- part 2: the load process ------------------------------------------------------------------

async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    from citycard.domain.offline import IssuerKeys, batch_key, batch_mac
    from citycard.protocols.offline import items_of
    from citycard.terminal.client import TerminalClient

    issuer = IssuerKeys.of_hex(*spec["issuer"])
    master = bytes.fromhex(spec["batch_master_hex"])
    cards, terminals = spec["cards"], spec["terminals"]
    per_terminal = spec["records"] // len(terminals)
    batch, inflight = spec["batch"], spec["inflight"]
    # Each terminal owns its own cards (a card is in one validator's hands at a time), so
    # counters are per (card, terminal) without clashes.
    share = len(cards) // len(terminals)
    work = []
    for k, tid in enumerate(terminals):
        mine = cards[k * share:(k + 1) * share]
        records = make_records(issuer, tid, mine, per_terminal, spec["first_counter"])
        key = batch_key(master, tid)
        batches = []
        for b, i in enumerate(range(0, len(records), batch)):
            chunk = records[i:i + batch]
            seq = spec["first_batch_seq"] + b
            batches.append((seq, items_of(chunk), batch_mac(key, tid, seq, chunk)))
        work.append((tid, batches))
    clients = []
    for tid, _ in work:
        c = TerminalClient(tid, bytes.fromhex(spec["terminal_master_hex"]))
        await c.connect("127.0.0.1", spec["port"])
        clients.append(c)
    codes: dict[int, int] = {}
    latencies: list[float] = []
    answered = 0
    deadline = time.perf_counter() + spec["seconds"]

    async def terminal(client: Any, batches: list[Any]) -> None:
        nonlocal answered
        sem = asyncio.Semaphore(inflight)

        async def one(seq: int, items: list[Any], mac: bytes) -> None:
            nonlocal answered
            async with sem:
                if time.perf_counter() > deadline:
                    return
                s = time.perf_counter()
                ack = await client.upload(seq, items, mac)
                latencies.append(time.perf_counter() - s)
                for c in ack.codes:
                    codes[c] = codes.get(c, 0) + 1
                answered += len(ack.codes)

        await asyncio.gather(*(one(*b) for b in batches))

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(terminal(c, b) for c, (_, b) in zip(clients, work, strict=True)))
    elapsed = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    for c in clients:
        await c.close()
    lat = sorted(latencies)
    return {"answered": answered, "codes": {str(k): v for k, v in codes.items()}, "elapsed_s": elapsed,
            "rate": answered / elapsed, "batch_p50_ms": lat[len(lat) // 2] * 1000 if lat else 0.0,
            "batch_p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0,
            "client_cpu_s": client_cpu}


def client_main() -> int:
    import uvloop

    spec = json.loads(sys.stdin.read())
    print(json.dumps(uvloop.run(_load(spec))))
    return 0


def postgres_cpu_s() -> float:
    """CPU seconds used so far by this machine's postgres processes (a local server; 0 if not
    readable): the database's share of a run, from /proc."""
    import os

    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name.startswith("postgres"):
            total += int(rest[11]) + int(rest[12])  # utime, stime
    return total / tick


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--client"], input=json.dumps(spec), capture_output=True,
                         text=True, timeout=spec["seconds"] + 300)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


async def bench_e2e(args: argparse.Namespace) -> dict[str, Any]:
    from bench_api import _drop

    from citycard.cli.runtime import Platform
    from citycard.cli.services import migrate_db, resolve_services
    from citycard.config.settings import load_settings
    from citycard.loadtest.city import plan_cards, plan_terminals, seed_city
    from citycard.persistence import db
    from citycard.persistence.db import drop_schema

    settings = load_settings(None, overrides={"database": {"schema": SCHEMA}, "redis": {"prefix": SCHEMA},
                                              "ray": {"namespace": SCHEMA}})
    services = resolve_services(settings)
    platform = Platform(settings, services)
    try:
        await drop_schema(services.db_url, SCHEMA)
        await migrate_db(settings, services.db_url)
        cards_rows = plan_cards(args.cards, settings.city.account_shards, seed=3)
        terminals = plan_terminals(args.terminals, seed=3)
        conn = await db.connect(services.db_url, SCHEMA)
        try:
            await seed_city(conn, cards_rows, terminals)
            cards = [int(r[0]) for r in cards_rows]
            await conn.copy_records_to_table("offline_cards", records=[(c, LOADED_FEN) for c in cards],
                                             columns=("card_no", "loaded_fen"))
        finally:
            await conn.close()
        await platform.start(gateway_port=0, metrics_port=0, api_port=-1)
        print(f"platform up ({'embedded' if services.embedded else 'configured'} services); {len(cards)} cards, "
              f"{len(terminals)} terminals", file=sys.stderr, flush=True)
        c = settings.card
        base = {"issuer": [c.issuer_mpk_hex, c.issuer_mlk_hex, c.issuer_mtk_hex],
                "batch_master_hex": c.batch_master_key_hex, "terminal_master_hex": settings.city.master_key.hex(),
                "port": platform.gateway_port, "cards": cards, "terminals": [t.terminal_id for t in terminals],
                "batch": args.batch, "inflight": args.inflight, "seconds": args.seconds}
        per_card_run = -(-args.records * len(terminals) // len(cards)) + 1
        results = []
        accepted = 0
        for run in range(args.runs + 1):  # run 0: the warm-up (connections, code paths, the LRU)
            n = args.records if run else min(args.records, 20_000)
            cpu0, pg0 = time.process_time(), postgres_cpu_s()
            r = await asyncio.to_thread(measure, {**base, "records": n, "first_counter": run * per_card_run,
                                                  "first_batch_seq": 1 + run * 10_000})
            r["gateway_cpu_s"] = time.process_time() - cpu0
            r["postgres_cpu_s"] = postgres_cpu_s() - pg0
            print(f"e2e run {run}{' (warm-up)' if not run else ''}: {r['rate']:,.0f} records/s durable, "
                  f"batch p50 {r['batch_p50_ms']:.0f} ms p99 {r['batch_p99_ms']:.0f} ms, codes {r['codes']}, "
                  f"CPU: gateway process {r['gateway_cpu_s']:.1f} s, postgres {r['postgres_cpu_s']:.1f} s, load"
                  f" process {r['client_cpu_s']:.1f} s, in {r['elapsed_s']:.1f} s",
                  file=sys.stderr, flush=True)
            accepted += r["codes"].get("0", 0)
            if run:
                results.append(r)
        conn = await db.connect(services.db_url, SCHEMA)
        try:
            journaled = int(await conn.fetchval("SELECT count(*) FROM offline_records"))
        finally:
            await conn.close()
        return {"results": results, "journaled": journaled, "cards": len(cards), "terminals": len(terminals),
                "services": "embedded" if services.embedded else "configured", "accepted_check": accepted}
    finally:
        await platform.stop()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        await _drop(services.db_url, services.redis_url, SCHEMA)
        services.stop()


def main() -> int:
    if "--client" in sys.argv:
        return client_main()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("decide", "e2e"), default=None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--records", type=int, default=200_000, help="records per run (a count bound)")
    p.add_argument("--seconds", type=float, default=30.0, help="time bound of one e2e run")
    p.add_argument("--cards", type=int, default=20_000)
    p.add_argument("--terminals", type=int, default=8)
    p.add_argument("--batch", type=int, default=1000, help="records per upload")
    p.add_argument("--inflight", type=int, default=4, help="uploads in flight per connection")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out: dict[str, Any] = {}
    if args.only in (None, "decide"):
        out["decide"] = bench_decide(args.records, args.cards, args.runs)
    if args.only in (None, "e2e"):
        import uvloop

        out["e2e"] = uvloop.run(bench_e2e(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}, {max(xs):,.0f})"

    if "decide" in out:
        d = out["decide"]
        print(f"\ndecision per core, {d['records']:,} records over {d['cards']:,} cards, {args.runs} runs")
        for mode in ("warm", "cold"):
            print(f"  TAC check + decision, {mode} key cache: {fmt(d['rates'][mode])} records/s")
    ok = True
    if "e2e" in out:
        e = out["e2e"]
        rs = e["results"]
        print(f"\nend to end, durable: {e['services']} services, {e['cards']:,} cards, {e['terminals']} terminals, "
              f"batches of {args.batch}, {args.inflight} in flight each, {args.runs} runs")
        print(f"  records/s median (min, max): {fmt([r['rate'] for r in rs])}")
        print(f"  batch latency p50 {statistics.median(r['batch_p50_ms'] for r in rs):.0f} ms, "
              f"p99 {statistics.median(r['batch_p99_ms'] for r in rs):.0f} ms")
        ok = e["journaled"] == e["accepted_check"] and all(set(r["codes"]) <= {"0"} for r in rs)
        print(f"  check (every record ACCEPTED and journaled once): {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
