"""How much WAL one snapshot of changed cards writes into a shard's big store of card states,
how long it takes, and how long a small commit on another connection waits meanwhile (a journal
group commit stands in for it). Issue 17: at scale 1 the journal's commits stalled behind
snapshots.

Runs on the Postgres given by ``--url`` in a scratch schema, dropped at the end. Each mode starts
right after a CHECKPOINT, as a snapshot does in steady state (every page's first change after
it writes a full-page image):

    python3 scripts/bench_snapshot_wal.py --url postgresql://postgres@127.0.0.1:5432/test

Modes (``+wal_compression``: with it on, pglz, as the embedded Postgres ran until issue 17's fifth
pass; it now runs with it off, scripts/bench_checkpoint_fpi.py says why):
- ``upsert``: migration 0014's ``card_states``, each state upserted over the card's older one
  (the product until migration 0015);
- ``append``: the product's ``write_snapshot`` into migration 0015's ``card_state_log``;
- ``compact``: the product's ``compact_states`` after the appends above (deletes the states
  they superseded).
Prints one JSON line per mode.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import time

import asyncpg

from citycard.persistence.recovery import compact_states, write_snapshot

SCHEMA = "bench_snapshot_wal"
STATE_BYTES = 100  # about an encoded card state
FILL_BATCH = 200_000
PROBE_EVERY_S = 0.01


async def fill(conn: asyncpg.Connection, cards: int) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    await conn.execute(f"SET search_path = {SCHEMA}")
    await conn.execute(  # the shapes of migrations 0014 and 0015, and the snapshots mark
        "CREATE TABLE card_states (shard_id integer NOT NULL, card_no bigint NOT NULL, as_of_lsn bigint NOT NULL,"
        " balance_fen bigint NOT NULL, state bytea NOT NULL, PRIMARY KEY (shard_id, card_no));"
        "CREATE TABLE card_state_log (shard_id integer NOT NULL, card_no bigint NOT NULL,"
        " as_of_lsn bigint NOT NULL, balance_fen bigint NOT NULL, state bytea NOT NULL);"
        "CREATE INDEX ON card_state_log (shard_id, as_of_lsn);"
        "CREATE TABLE snapshots (shard_id integer NOT NULL, snapshot_lsn bigint NOT NULL, cards bigint,"
        " balance_fen bigint, PRIMARY KEY (shard_id, snapshot_lsn));"
        "CREATE TABLE probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
    state = os.urandom(STATE_BYTES)
    for start in range(0, cards, FILL_BATCH):
        rows = [(0, n, 1, 1000, state) for n in range(start, min(cards, start + FILL_BATCH))]
        await conn.copy_records_to_table("card_states", records=rows, schema_name=SCHEMA)
        await conn.copy_records_to_table("card_state_log", records=rows, schema_name=SCHEMA)
    for table in ("card_states", "card_state_log"):
        await conn.execute(f"VACUUM ANALYZE {table}")


async def probe(url: str, stop: asyncio.Event, waits_ms: list[float]) -> None:
    conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
    try:
        for _ in range(1_000_000):  # bounded; ends with the snapshot
            if stop.is_set():
                return
            t = time.perf_counter()
            await conn.execute("INSERT INTO probe DEFAULT VALUES")  # one commit, like a group commit
            waits_ms.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(PROBE_EVERY_S)
    finally:
        await conn.close()


async def one(url: str, mode: str, cards: int, changed: int, lsn: int, chunk: int, pause_s: float) -> dict:
    conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
    try:
        await conn.execute(f"SET wal_compression = {'on' if mode.endswith('+wal_compression') else 'off'}")
        picked = random.Random(lsn).sample(range(cards), changed)
        rows = [(n, 1000 + lsn, os.urandom(STATE_BYTES)) for n in picked]
        await conn.execute("CHECKPOINT")
        stop = asyncio.Event()
        waits: list[float] = []
        task = asyncio.ensure_future(probe(url, stop, waits))
        wal0 = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
        t0 = time.perf_counter()
        touched = len(rows)
        if mode.startswith("upsert"):
            for i in range(0, len(rows), chunk):
                if i:
                    await asyncio.sleep(pause_s)
                part = rows[i:i + chunk]
                await conn.execute(  # the statement of write_snapshot before migration 0015
                    "INSERT INTO card_states (shard_id, card_no, as_of_lsn, balance_fen, state)"
                    " SELECT 0, * FROM unnest($2::bigint[], $1::bigint[], $3::bigint[], $4::bytea[])"
                    " ON CONFLICT (shard_id, card_no) DO UPDATE SET as_of_lsn = EXCLUDED.as_of_lsn,"
                    " balance_fen = EXCLUDED.balance_fen, state = EXCLUDED.state"
                    " WHERE card_states.as_of_lsn <= EXCLUDED.as_of_lsn",
                    [lsn] * len(part), [r[0] for r in part], [r[1] for r in part], [r[2] for r in part])
        elif mode.startswith("append"):
            await write_snapshot(conn, 0, lsn, rows, 0, chunk_cards=chunk, chunk_pause_s=pause_s)
        else:
            touched = await compact_states(conn, 0, chunk_rows=chunk, chunk_pause_s=pause_s)
        seconds = time.perf_counter() - t0
        wal_bytes = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1)", wal0)
        stop.set()
        await task
        waits.sort()
        return {"mode": mode, "cards": cards, "changed": changed, "rows_written_or_deleted": touched, "chunk": chunk, "pause_ms": pause_s * 1000,
                "seconds": round(seconds, 2), "wal_mb": round(float(wal_bytes) / 2**20, 1),
                "commit_p50_ms": round(statistics.median(waits), 2) if waits else None,
                "commit_p99_ms": round(waits[int(len(waits) * 0.99)], 2) if waits else None,
                "commit_max_ms": round(waits[-1], 2) if waits else None, "commits": len(waits)}
    finally:
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--cards", type=int, default=5_000_000, help="cards in the shard's card_states")
    ap.add_argument("--changed", type=int, default=1_000_000, help="cards one snapshot writes")
    ap.add_argument("--chunk", type=int, default=20_000)
    ap.add_argument("--pause-ms", type=float, default=20.0)
    ap.add_argument("--modes", default="upsert,upsert+wal_compression,append,append+wal_compression,"
                                       "compact+wal_compression")
    args = ap.parse_args()
    conn = await asyncpg.connect(args.url)
    try:
        t = time.perf_counter()
        await fill(conn, args.cards)
        print(json.dumps({"filled_cards": args.cards, "seconds": round(time.perf_counter() - t, 1)}), flush=True)
        for k, mode in enumerate(args.modes.split(",")):
            print(json.dumps(await one(args.url, mode, args.cards, args.changed, 10 + k, args.chunk,
                                       args.pause_ms / 1000)), flush=True)
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
