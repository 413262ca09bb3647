"""What a checkpoint does to journal commits when the journal has an index on a random key (the
card number), as the product's journal partitions do. Issue 17: in the scale-1 day every
checkpoint start was followed within a second by 10-35 s of stalled taps, even at 5,000 taps/s.
After a checkpoint, the first change of each page writes a full-page image (FPI) to the WAL;
each appended row lands on a random leaf of the card index, so for a while nearly every row
writes one, compressed by the backend that inserts it.

Runs on the Postgres given by ``--url`` in a scratch schema, dropped at the end:

    python3 scripts/bench_checkpoint_fpi.py --url postgresql://postgres@127.0.0.1:5432/test
    python3 scripts/bench_checkpoint_fpi.py --embedded --modes pglz,off   # the product's own

It fills a journal-like table of ``--rows`` rows (indexes on (card_no, lsn) and on lsn), then,
for each ``wal_compression`` mode, runs ``--writers`` writers committing ``--batch`` rows at a
time on a fixed schedule (``--rate`` rows/s in all, open loop: a late commit delays the ones
after it, as a shard's group commit does), issues a CHECKPOINT after ``--before-s`` and goes on
for ``--after-s``. Prints one JSON line per mode: each batch's lateness from its due time (p50,
p99, max), and FPIs and WAL MB/s, in the 10 s before the checkpoint, the 10 s after it, and the
rest.
"""

import argparse
import asyncio
import json
import random
import statistics
import time

import asyncpg

SCHEMA = "bench_checkpoint_fpi"
FILL_CHUNK = 1_000_000
WINDOW_S = 10.0  # the windows just before and just after the CHECKPOINT


async def fill(conn: asyncpg.Connection, rows: int, cards: int) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; SET search_path = {SCHEMA}")
    await conn.execute(
        "CREATE TABLE journal (lsn bigint NOT NULL, card_no bigint NOT NULL, terminal_id integer NOT NULL,"
        " seq bigint NOT NULL, time_ms bigint NOT NULL, amount_fen integer NOT NULL,"
        " balance_after_fen bigint NOT NULL, code smallint NOT NULL)")
    for first in range(0, rows, FILL_CHUNK):
        await conn.execute(
            "INSERT INTO journal SELECT g, (random() * $2)::bigint, 1000 + g % 30000, g, g, 200, 5000, 0"
            " FROM generate_series($1::bigint, $3::bigint) g", first + 1, cards, min(rows, first + FILL_CHUNK))
    await conn.execute("CREATE INDEX ON journal (card_no, lsn); CREATE INDEX ON journal (lsn)")
    await conn.execute("VACUUM ANALYZE journal")


async def wal_stats(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT wal_fpi, wal_bytes FROM pg_stat_wal")
    return int(row[0]), int(row[1])


async def writer(url: str, mode: str, index: int, n_writers: int, rate_per_s: float, batch: int,
                 next_lsn: list[int], cards: int, start_s: float, end_s: float,
                 out: list[tuple[float, float]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"SET search_path = {SCHEMA}; SET wal_compression = '{mode}'")
        rng = random.Random(index)
        every_s = batch * n_writers / rate_per_s
        k = 0
        while True:
            due_s = start_s + (k + index / n_writers) * every_s
            if due_s >= end_s:
                break
            if (wait_s := due_s - time.time()) > 0:
                await asyncio.sleep(wait_s)
            first = next_lsn[0]
            next_lsn[0] += batch
            rows = [(first + i, rng.randrange(cards), 1000 + i, first + i, int(due_s * 1000), 200, 5000, 0)
                    for i in range(batch)]
            async with conn.transaction():
                await conn.copy_records_to_table("journal", records=rows, schema_name=SCHEMA)
            out.append((due_s, time.time() - due_s))
            k += 1
    finally:
        await conn.close()


def window(samples: list[tuple[float, float]], lo_s: float, hi_s: float) -> dict[str, float]:
    """Lateness of the commits due in ``[lo_s, hi_s)``."""
    late_ms = sorted(lat * 1000.0 for due, lat in samples if lo_s <= due < hi_s)
    if not late_ms:
        return {}
    return {"commits": len(late_ms), "late_p50_ms": statistics.median(late_ms),
            "late_p99_ms": late_ms[min(len(late_ms) - 1, int(len(late_ms) * 0.99))], "late_max_ms": late_ms[-1]}


def wal_rates(a: tuple[int, int, float], b: tuple[int, int, float]) -> dict[str, float]:
    elapsed_s = max(b[2] - a[2], 1e-9)
    return {"fpi_per_s": (b[0] - a[0]) / elapsed_s, "wal_mb_per_s": (b[1] - a[1]) / elapsed_s / 1e6}


async def run_mode(url: str, mode: str, args: argparse.Namespace, next_lsn: list[int]) -> dict[str, object]:
    admin = await asyncpg.connect(url)
    writers: list[asyncio.Task[None]] = []
    try:
        await admin.execute("CHECKPOINT")  # each mode starts from the same clean point
        await asyncio.sleep(2.0)
        start_s = time.time() + 0.5
        ckpt_s = start_s + args.before_s
        end_s = ckpt_s + args.after_s
        samples: list[tuple[float, float]] = []
        writers = [asyncio.create_task(writer(url, mode, i, args.writers, args.rate, args.batch, next_lsn,
                                              args.cards, start_s, end_s, samples)) for i in range(args.writers)]
        await asyncio.sleep(max(0.0, ckpt_s - WINDOW_S - time.time()))
        w0 = (*await wal_stats(admin), time.time())
        await asyncio.sleep(max(0.0, ckpt_s - time.time()))
        w1 = (*await wal_stats(admin), time.time())
        await admin.execute("CHECKPOINT")
        checkpoint_s = time.time() - w1[2]
        await asyncio.sleep(max(0.0, ckpt_s + WINDOW_S - time.time()))
        w2 = (*await wal_stats(admin), time.time())
        await asyncio.gather(*writers)
    finally:
        for task in writers:  # a failed mode leaves no writer running while the schema is dropped
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        await admin.close()
    return {
        "mode": mode, "rate_per_s": args.rate, "rows": args.rows, "checkpoint_s": round(checkpoint_s, 2),
        "before": {**window(samples, ckpt_s - WINDOW_S, ckpt_s), **wal_rates(w0, w1)},
        "after_10s": {**window(samples, ckpt_s, ckpt_s + WINDOW_S), **wal_rates(w1, w2)},
        "after_rest": window(samples, ckpt_s + WINDOW_S, end_s),
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--rows", type=int, default=10_000_000, help="rows in the journal before the runs")
    p.add_argument("--cards", type=int, default=5_000_000, help="distinct card numbers (a scale-1 shard's)")
    p.add_argument("--rate", type=float, default=5_000.0, help="rows/s committed, all writers together")
    p.add_argument("--writers", type=int, default=2, help="writers (the shards' journal writers)")
    p.add_argument("--batch", type=int, default=50, help="rows a commit (a group commit)")
    p.add_argument("--before-s", type=float, default=40.0, help="writing before the CHECKPOINT")
    p.add_argument("--after-s", type=float, default=30.0, help="writing after it")
    p.add_argument("--modes", default="pglz,lz4,off", help="wal_compression values, in order")
    p.add_argument("--embedded", action="store_true",
                   help="on the embedded Postgres under the state dir (started if it is not running), not --url")
    args = p.parse_args()
    if args.before_s < WINDOW_S or args.after_s < WINDOW_S:
        p.error(f"--before-s and --after-s must be at least {WINDOW_S:g} s: the windows measured")
    if args.embedded:
        from citycard.config.settings import load_settings
        from citycard.persistence.embedded import start_embedded_postgres

        service = start_embedded_postgres(load_settings().state.path)
        args.url = service.url
        try:
            await run(args)
        finally:
            service.stop()
    else:
        await run(args)


async def run(args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(args.url)
    try:
        began = time.time()
        await fill(conn, args.rows, args.cards)
        print(json.dumps({"filled_rows": args.rows, "fill_s": round(time.time() - began, 1)}), flush=True)
        next_lsn = [args.rows + 1]
        for mode in args.modes.split(","):
            try:
                await conn.execute(f"SET wal_compression = '{mode}'")
            except asyncpg.PostgresError as exc:
                print(json.dumps({"mode": mode, "skipped": str(exc)}), flush=True)
                continue
            print(json.dumps(await run_mode(args.url, mode, args, next_lsn)), flush=True)
    finally:
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
