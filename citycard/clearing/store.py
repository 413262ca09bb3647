"""The clearing house's event store on Postgres, in a schema of its own (default ``clearing``).

Every mutating call is a row, numbered by one sequence across the tables so that a restart
replays them in the order they happened: participants, deliveries (with their files, when
accepted), issuers' verdicts, closes and settled marks. A refused delivery or verdict is kept
with its code and reason (for the investigation) and skipped by the replay: it changed
nothing. Tables are named ``house_*`` so the house may share a schema with a city (tests).
"""

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LOCK_BASE = 0x0C1E_A800  # + a hash of the schema: one house per schema

DDL = """
CREATE SEQUENCE IF NOT EXISTS house_event_seq;
CREATE TABLE IF NOT EXISTS house_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS house_participants (
    seq               bigint PRIMARY KEY DEFAULT nextval('house_event_seq'),
    city              text NOT NULL UNIQUE,
    public_key        bytea NOT NULL CHECK (length(public_key) = 32),
    net_debit_cap_fen bigint NOT NULL CHECK (net_debit_cap_fen >= 0),
    rate_bp           integer NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
    card_prefixes     text[] NOT NULL,
    registered_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS house_deliveries (
    seq             bigint PRIMARY KEY DEFAULT nextval('house_event_seq'),
    sender          text NOT NULL,
    window_name     text NOT NULL,
    manifest        bytea NOT NULL,
    signature       bytea NOT NULL,
    manifest_sha256 text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    code            smallint NOT NULL,          -- ClearingCode: 0 accepted, else why refused
    reason          text NOT NULL,
    accepted        integer NOT NULL DEFAULT 0, -- records cleared
    rejected        integer NOT NULL DEFAULT 0  -- records rejected inside an accepted delivery
);
-- The backstop of DUPLICATE_FILE: one accepted delivery per sender and window.
CREATE UNIQUE INDEX IF NOT EXISTS house_deliveries_once ON house_deliveries (sender, window_name) WHERE code = 0;
CREATE TABLE IF NOT EXISTS house_delivery_files (
    delivery_seq bigint NOT NULL REFERENCES house_deliveries,
    name         text NOT NULL,
    data         bytea NOT NULL,
    PRIMARY KEY (delivery_seq, name)
);
CREATE TABLE IF NOT EXISTS house_verdicts (
    seq         bigint PRIMARY KEY DEFAULT nextval('house_event_seq'),
    issuer      text NOT NULL,
    record_id   text NOT NULL,
    reason      text NOT NULL,
    signature   bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    code        smallint NOT NULL,
    outcome     text NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS house_verdicts_once ON house_verdicts (record_id) WHERE code = 0;
CREATE TABLE IF NOT EXISTS house_closes (
    seq         bigint PRIMARY KEY DEFAULT nextval('house_event_seq'),
    window_name text NOT NULL UNIQUE,
    closed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS house_settled (
    seq         bigint PRIMARY KEY DEFAULT nextval('house_event_seq'),
    city        text NOT NULL,
    window_name text NOT NULL,
    marked_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (city, window_name)
);
"""


def check_schema(schema: str) -> str:
    if not SCHEMA_RE.match(schema):
        raise ValueError(f"a schema name is 1..63 of a-z 0-9 _ (not starting with a digit); got {schema[:70]!r}")
    return schema


async def migrate(conn: asyncpg.Connection, schema: str, settings: Mapping[str, str]) -> None:
    """Make the schema and its tables if absent; ``settings`` (the core's bounds) must match
    what the stored events were made with: a replay under other bounds could decide otherwise."""
    check_schema(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_BASE)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute(DDL)
        for key, value in settings.items():
            stored = await conn.fetchval("SELECT value FROM house_meta WHERE key = $1", key)
            if stored is None:
                await conn.execute("INSERT INTO house_meta (key, value) VALUES ($1, $2)", key, value)
            elif stored != value:
                raise ValueError(f"{key} is {value}, but the events in schema {schema} were made with {stored}")


async def try_single_writer(conn: asyncpg.Connection, schema: str) -> bool:
    """Hold a session advisory lock for ``schema`` on ``conn``: False if another house holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", _LOCK_BASE, schema))


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    kind: str  # participant | delivery | verdict | close | settled
    row: Mapping[str, Any]


async def events(conn: asyncpg.Connection) -> AsyncIterator[Event]:
    """The accepted events in the order they happened (a delivery's files fetched as it comes)."""
    found: list[Event] = []
    for kind, sql in (
        ("participant", "SELECT * FROM house_participants"),
        ("delivery", "SELECT seq, sender, window_name, manifest, signature, accepted FROM house_deliveries"
                     " WHERE code = 0"),
        ("verdict", "SELECT seq, issuer, record_id, reason FROM house_verdicts WHERE code = 0"),
        ("close", "SELECT * FROM house_closes"),
        ("settled", "SELECT * FROM house_settled"),
    ):
        found += [Event(r["seq"], kind, r) for r in await conn.fetch(sql)]
    found.sort(key=lambda e: e.seq)
    for e in found:
        if e.kind == "delivery":
            files = {r["name"]: bytes(r["data"]) for r in await conn.fetch(
                "SELECT name, data FROM house_delivery_files WHERE delivery_seq = $1", e.seq)}
            yield Event(e.seq, e.kind, {**e.row, "files": files})
        else:
            yield e


async def add_participant(conn: asyncpg.Connection, city: str, public_key: bytes, cap_fen: int, rate_bp: int,
                          prefixes: tuple[str, ...]) -> None:
    await conn.execute("INSERT INTO house_participants (city, public_key, net_debit_cap_fen, rate_bp, card_prefixes)"
                       " VALUES ($1, $2, $3, $4, $5)", city, public_key, cap_fen, rate_bp, list(prefixes))


async def add_delivery(conn: asyncpg.Connection, sender: str, window: str, manifest: bytes, signature: bytes,
                       digest: str, code: int, reason: str, accepted: int, rejected: int,
                       files: Mapping[str, bytes]) -> int:
    """The delivery's row (its files only when accepted: a refused one's are not kept)."""
    seq: int = await conn.fetchval(
        "INSERT INTO house_deliveries (sender, window_name, manifest, signature, manifest_sha256, code, reason,"
        " accepted, rejected) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq",
        sender, window, manifest, signature, digest, code, reason, accepted, rejected)
    if code == 0 and files:
        await conn.copy_records_to_table("house_delivery_files", columns=["delivery_seq", "name", "data"],
                                         records=[(seq, n, d) for n, d in sorted(files.items())])
    return seq


async def add_verdict(conn: asyncpg.Connection, issuer: str, record_id: str, reason: str, signature: bytes,
                      code: int, outcome: str) -> None:
    await conn.execute("INSERT INTO house_verdicts (issuer, record_id, reason, signature, code, outcome)"
                       " VALUES ($1, $2, $3, $4, $5, $6)", issuer, record_id, reason, signature, code, outcome)


async def add_close(conn: asyncpg.Connection, window: str) -> None:
    await conn.execute("INSERT INTO house_closes (window_name) VALUES ($1)", window)


async def add_settled(conn: asyncpg.Connection, city: str, window: str) -> None:
    await conn.execute("INSERT INTO house_settled (city, window_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                       city, window)


async def accepted_files(conn: asyncpg.Connection, window: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file of the window's accepted deliveries, in delivery then name order."""
    return [(r["name"], bytes(r["data"])) for r in await conn.fetch(
        "SELECT f.name, f.data FROM house_delivery_files f JOIN house_deliveries d ON d.seq = f.delivery_seq"
        " WHERE d.code = 0 AND d.window_name = $1 ORDER BY d.seq, f.name", window)]


async def refused_deliveries(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM house_deliveries WHERE code <> 0"))
