"""One disbursement crediting N accounts, through the HTTP API and the shards, timed.

Each run: a fresh schema; N holders with a card each COPYed straight into it (setup, not
money); the platform started; a programme made; the N-line CSV list uploaded (timed); the run
started and polled until done (timed); then checked against the journal (N credit rows, the
fen credited). Prints each run and the median, min and max.

    .venv/bin/python scripts/bench_disbursement.py --n 1000000 --runs 3
"""

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from datetime import date, timedelta

import httpx

from citycard.api.auth import Role, create_token
from citycard.cli.runtime import Platform
from citycard.cli.services import Services, migrate_db
from citycard.config.settings import load_settings
from citycard.domain.cards import make_card_no
from citycard.domain.identity import make_citizen_id
from citycard.domain.shard import shard_of
from citycard.persistence import db
from citycard.persistence.db import drop_schema

SCHEMA = "bench_disbursement"
AMOUNT_FEN = 5000
BORN0 = date(1940, 1, 1)


def people(n: int) -> list[tuple[int, str, date]]:
    """(holder_id, citizen_id, birth date): 1,000 serials per birth date, so ids are unique."""
    out = []
    for i in range(n):
        born = BORN0 + timedelta(days=i // 1000)
        out.append((i + 1, make_citizen_id(330106, born, i % 1000), born))
    return out


async def seed(url: str, n_shards: int, who: list[tuple[int, str, date]]) -> None:
    conn = await db.connect(url, SCHEMA)
    try:
        await conn.copy_records_to_table(
            "holders", records=[(h, c, f"Holder {h}", b, 0) for h, c, b in who],
            columns=["holder_id", "citizen_id", "name", "birth_date", "category"])
        await conn.execute("SELECT setval('holders_holder_id_seq', $1)", len(who))
        cards = [(card, shard_of(card, n_shards), 0, h) for h, _, _ in who for card in (make_card_no(h),)]
        await conn.copy_records_to_table("cards", records=cards, columns=["card_no", "shard_id", "status", "holder_id"])
        await conn.execute("ANALYZE holders; ANALYZE cards")
    finally:
        await conn.close()


async def one_run(args: argparse.Namespace, i: int) -> dict[str, float]:
    settings = load_settings(env={}, overrides={
        "database": {"url": args.db_url, "schema": SCHEMA},
        "redis": {"url": args.redis_url, "prefix": SCHEMA},
        "api": {"disbursement_batch": args.batch},
        "city": {"account_shards": args.shards},
        "metrics": {"port": 0},
    })
    services = Services(args.db_url, args.redis_url)
    await drop_schema(args.db_url, SCHEMA)
    await migrate_db(settings, args.db_url)
    who = people(args.n)
    t0 = time.perf_counter()
    await seed(args.db_url, args.shards, who)
    seed_s = time.perf_counter() - t0
    csv = ("citizen_id\n" + "\n".join(c for _, c, _ in who) + "\n").encode()
    del who
    platform = Platform(settings, services)
    t0 = time.perf_counter()
    await platform.start(gateway_port=0, api_port=0)
    startup_s = time.perf_counter() - t0
    try:
        conn = await db.connect(args.db_url, SCHEMA)
        try:
            token = await create_token(conn, "bench", [Role.PROGRAMME_ADMIN])
        finally:
            await conn.close()
        h = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{platform.api_port}", timeout=600) as http:
            r = await http.post("/programmes", headers=h, json={"name": "bench", "kind": "welfare",
                                                                 "amount_fen": AMOUNT_FEN})
            r.raise_for_status()
            pid = r.json()["programme_id"]
            t0 = time.perf_counter()
            r = await http.post(f"/programmes/{pid}/beneficiaries", content=csv,
                                headers={**h, "Content-Type": "text/csv"})
            upload_s = time.perf_counter() - t0
            r.raise_for_status()
            up = r.json()
            assert up["accepted"] == args.n and up["rejected"] == 0, up
            if args.pause:
                print(f"pid {os.getpid()}: starting the run in {args.pause} s", file=sys.stderr, flush=True)
                await asyncio.sleep(args.pause)
            if args.pause:
                print(f"run start {time.time():.3f}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            r = await http.post(f"/programmes/{pid}/runs", headers=h, json={"period": "2026-11"})
            r.raise_for_status()
            run_id = r.json()["run_id"]
            while True:
                run = (await http.get(f"/runs/{run_id}", headers=h)).json()
                if run["state"] != "running":
                    break
                await asyncio.sleep(0.1)
            run_s = time.perf_counter() - t0
            if args.pause:
                print(f"run end {time.time():.3f}", file=sys.stderr, flush=True)
        assert run["state"] == "done" and run["credited"] == args.n, run
        conn = await db.connect(args.db_url, SCHEMA)
        try:
            rows, fen = await conn.fetchrow(
                "SELECT count(*), coalesce(sum(d_general), 0) FROM journal WHERE kind = 103 AND result = 0")
        finally:
            await conn.close()
        assert rows == args.n and fen == args.n * AMOUNT_FEN, (rows, fen)
    finally:
        await platform.stop()
    out = {"seed_s": seed_s, "startup_s": startup_s, "upload_s": upload_s, "run_s": run_s,
           "credits_per_s": args.n / run_s}
    print(f"run {i + 1}: seed {seed_s:.1f} s, platform up {startup_s:.1f} s, upload {upload_s:.2f} s, "
          f"run {run_s:.2f} s ({args.n / run_s:,.0f} credits/s), journal: {rows:,} credits, "
          f"{fen / 100:,.2f} yuan", flush=True)
    return out


async def main_async(args: argparse.Namespace) -> None:
    results = [await one_run(args, i) for i in range(args.runs)]
    if not args.keep:
        await drop_schema(args.db_url, SCHEMA)

    def fmt(key: str, unit: str) -> str:
        xs = [r[key] for r in results]
        return f"median {statistics.median(xs):,.2f} {unit} (min {min(xs):,.2f}, max {max(xs):,.2f})"

    print(f"N = {args.n:,}, {args.shards} account shards, batch {args.batch}, {args.runs} runs")
    print("upload:", fmt("upload_s", "s"))
    print("run:   ", fmt("run_s", "s"))
    print("rate:  ", fmt("credits_per_s", "credits/s"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="beneficiaries (holders with a card)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=5000, help="api.disbursement_batch: credits per shard call")
    p.add_argument("--shards", type=int, default=2, help="city.account_shards")
    p.add_argument("--db-url", default=os.environ.get("CITYCARD_DATABASE_URL",
                                                     "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--redis-url", default=os.environ.get("CITYCARD_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--pause", type=float, default=0,
                   help="profiling: wait this long before the run, print its start and end times on stderr")
    p.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("citycard.cards.disburse").setLevel(logging.INFO)  # the runner's own timings
    import ray
    import uvloop

    try:
        uvloop.run(main_async(args))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
