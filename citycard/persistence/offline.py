"""The offline records' tables (migration 0007): each call runs in the caller's transaction.

Who writes what (docs/database.md): offline_records is append-only, its primary key the
backstop of exactly once; a card's offline_cards row has two owners: loads raise loaded_fen
under its row lock, the gateway's offline desk writes the other columns back (``write_back``)
from its shadows. A shadow is derivable from the journal (``cold_shadows``), so the desk's
columns may lag the journal between write-backs without losing anything.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from ..domain.offline import OfflineRecord
from ..domain.offline_book import WINDOW, CardShadow, shadow_of_journal
from ..protocols.offline import when_digits, when_of

RECORD_COLUMNS = ("card_no", "offline_counter", "amount_fen", "balance_after_fen", "tx_type", "terminal_id",
                  "terminal_seq", "tx_when", "tac", "kind", "route", "code", "batch_seq")
GAP_COLUMNS = ("card_no", "counter_from", "counter_to", "terminal_id", "batch_seq")
BATCH_COLUMNS = ("terminal_id", "batch_seq", "mac", "codes")
_SEEN_BYTES = WINDOW // 8


def record_row(r: OfflineRecord, code: int, batch_seq: int, when: int | None = None) -> tuple[Any, ...]:
    """A row of offline_records / offline_rejects. ``when``: the wire's digits (a record whose
    date is no calendar date has no ``When``)."""
    return (r.card_no, r.offline_counter, r.amount_fen, r.balance_after_fen, r.transaction_type, r.terminal_id,
            r.terminal_seq, when_digits(r.when) if when is None else when, r.tac, r.kind, r.route, code, batch_seq)


def _record(row: asyncpg.Record) -> OfflineRecord:
    return OfflineRecord(row["card_no"], row["offline_counter"], row["amount_fen"], row["balance_after_fen"],
                         row["tx_type"], row["terminal_id"], row["terminal_seq"], when_of(row["tx_when"]),
                         bytes(row["tac"]), row["kind"], row["route"])


async def answered_batches(conn: asyncpg.Connection, keys: Sequence[tuple[int, int]]
                           ) -> dict[tuple[int, int], tuple[bytes, list[int]]]:
    """(terminal_id, batch_seq) -> (mac, codes) of the uploads among ``keys`` answered before."""
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT b.terminal_id, b.batch_seq, b.mac, b.codes FROM offline_batches b"
        " JOIN unnest($1::bigint[], $2::bigint[]) AS k(t, s) ON b.terminal_id = k.t AND b.batch_seq = k.s",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["terminal_id"], r["batch_seq"]): (bytes(r["mac"]), list(r["codes"])) for r in rows}


# A card's shadow from its journal: loads from its offline_cards row (raised by loads only),
# spending and counters from offline_records (what is journaled is the truth: the row's desk
# columns may lag, docs/database.md).
_COLD = (
    "SELECT k.card_no, o.loaded_fen, o.card_no IS NOT NULL AS has_row,"
    " o.card_no IS NOT NULL OR EXISTS (SELECT 1 FROM cards c WHERE c.card_no = k.card_no) AS issued,"
    " j.spent, j.n, j.last, w.top"
    " FROM unnest($1::bigint[]) AS k(card_no)"
    " LEFT JOIN offline_cards o ON o.card_no = k.card_no"
    " CROSS JOIN LATERAL (SELECT coalesce(sum(r.amount_fen), 0)::bigint AS spent, count(*)::int AS n,"
    "  coalesce(max(r.offline_counter), -1) AS last FROM offline_records r WHERE r.card_no = k.card_no) j"
    " CROSS JOIN LATERAL (SELECT array_agg(t.offline_counter) AS top FROM (SELECT r.offline_counter"
    "  FROM offline_records r WHERE r.card_no = k.card_no ORDER BY r.offline_counter DESC"
    f"  LIMIT {WINDOW}) t) w")


async def cold_shadows(conn: asyncpg.Connection, card_nos: Iterable[int]) -> dict[int, CardShadow]:
    """The shadows of the issued cards among ``card_nos`` as the database makes them now (a card
    new to offline gets its offline_cards row). Cards not issued are absent."""
    cards = sorted(set(card_nos))
    if not cards:
        return {}
    rows = await conn.fetch(_COLD, cards)
    new = [r["card_no"] for r in rows if r["issued"] and not r["has_row"]]
    if new:
        await conn.execute("INSERT INTO offline_cards (card_no) SELECT unnest($1::bigint[]) ON CONFLICT DO NOTHING",
                           new)
    return {r["card_no"]: shadow_of_journal(r["card_no"], r["loaded_fen"] or 0, r["spent"], r["n"], r["last"],
                                            list(r["top"] or ()))
            for r in rows if r["issued"]}


async def loaded(conn: asyncpg.Connection, card_nos: Iterable[int]) -> dict[int, int]:
    """Each card's loaded_fen now (loads raise it in their own transactions)."""
    rows = await conn.fetch("SELECT card_no, loaded_fen FROM offline_cards WHERE card_no = ANY($1::bigint[])",
                            sorted(set(card_nos)))
    return {r["card_no"]: r["loaded_fen"] for r in rows}


async def write_back(conn: asyncpg.Connection, shadows: Sequence[CardShadow]) -> None:
    """Write the desk's columns of each card's row (never loaded_fen: loads own it, so a load and
    a write-back never undo each other). In card order; spending only grows."""
    if not shadows:
        return
    await conn.execute(
        "UPDATE offline_cards o SET last_counter = u.last_counter, spent_fen = u.spent_fen, seen = u.seen,"
        " missing = u.missing, updated_at = now()"
        " FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bytea[], $5::int[])"
        " AS u(card_no, last_counter, spent_fen, seen, missing)"
        " WHERE o.card_no = u.card_no AND o.spent_fen <= u.spent_fen",
        [s.card_no for s in shadows], [s.last_counter for s in shadows], [s.spent_fen for s in shadows],
        [s.seen.to_bytes(_SEEN_BYTES, "big") for s in shadows], [s.missing for s in shadows])


async def journaled(conn: asyncpg.Connection, keys: Sequence[tuple[int, int]]
                    ) -> dict[tuple[int, int], OfflineRecord]:
    """What offline_records holds under each (card, counter) of ``keys``."""
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT r.* FROM offline_records r JOIN unnest($1::bigint[], $2::int[]) AS k(c, n)"
        " ON r.card_no = k.c AND r.offline_counter = k.n",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["card_no"], r["offline_counter"]): _record(r) for r in rows}


async def write(conn: asyncpg.Connection, records: list[tuple[Any, ...]], rejects: list[tuple[Any, ...]],
                gaps: list[tuple[Any, ...]], batches: list[tuple[Any, ...]]) -> None:
    """COPY each kind of row in (no row here can conflict: its cards are locked, its batch new)."""
    for table, rows, columns in (("offline_records", records, RECORD_COLUMNS),
                                 ("offline_rejects", rejects, RECORD_COLUMNS),
                                 ("offline_gaps", gaps, GAP_COLUMNS),
                                 ("offline_batches", batches, BATCH_COLUMNS)):
        if rows:
            await conn.copy_records_to_table(table, records=rows, columns=columns)


async def card_records(conn: asyncpg.Connection | asyncpg.Pool, card_no: int, limit: int) -> list[asyncpg.Record]:
    """The card's journaled offline records, newest counter first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM offline_records WHERE card_no = $1 ORDER BY offline_counter DESC LIMIT $2", card_no, limit)
    return rows


async def shadow(conn: asyncpg.Connection | asyncpg.Pool, card_no: int) -> CardShadow | None:
    """The card's shadow as of now (from its journal: the row's desk columns may lag)."""
    r = await conn.fetchrow(_COLD, [card_no])
    if r is None or r["loaded_fen"] is None:
        return None
    return shadow_of_journal(card_no, r["loaded_fen"], r["spent"], r["n"], r["last"], list(r["top"] or ()))


def shadow_balance_sql(card_param: str = "$1") -> str:
    """SQL for a card's shadow balance now: loads less every offline purchase journaled."""
    return (f"SELECT o.loaded_fen - coalesce((SELECT sum(r.amount_fen) FROM offline_records r"
            f" WHERE r.card_no = o.card_no), 0) FROM offline_cards o WHERE o.card_no = {card_param}")


async def purse_history(conn: asyncpg.Connection | asyncpg.Pool, card_no: int, limit: int) -> list[asyncpg.Record]:
    """The card's on-card purse as the host knows it, newest first: offline purchases journaled
    and loads (kind, counter, amount_fen, balance_after_fen, terminal_id, card_when, at_ms, state)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM ("
        " SELECT 'offline_purchase' AS kind, offline_counter AS counter, amount_fen, balance_after_fen,"
        "  terminal_id, tx_when AS card_when, received_at AS at, CASE code WHEN 0 THEN 'accepted'"
        "  ELSE 'balance_impossible' END AS state FROM offline_records WHERE card_no = $1"
        " UNION ALL"
        " SELECT 'load', online_counter, amount_fen, balance_before_fen + amount_fen, terminal_id, host_when,"
        "  created_at, state FROM purse_loads WHERE card_no = $1"
        ") p ORDER BY at DESC, counter DESC LIMIT $2", card_no, limit)
    return rows


VISITOR_COLUMNS = ("card_no", "offline_counter", "amount_fen", "balance_after_fen", "tx_type", "terminal_id",
                   "terminal_seq", "tx_when", "tac", "kind", "route", "batch_seq")


async def write_visitors(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> list[bool]:
    """Keep other issuers' cards' records (VISITOR_COLUMNS), once by (card, offline counter): a
    record kept already (a resent batch) is left as it was. Per row, whether what is kept under
    its key is that record (False: another record with other content holds the key)."""
    if not rows:
        return []
    cols = list(zip(*rows, strict=True))
    await conn.execute(
        "INSERT INTO offline_visitor_records (card_no, offline_counter, amount_fen, balance_after_fen, tx_type,"
        " terminal_id, terminal_seq, tx_when, tac, kind, route, batch_seq)"
        " SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::smallint[], $6::bigint[],"
        " $7::bigint[], $8::bigint[], $9::bytea[], $10::smallint[], $11::int[], $12::bigint[])"
        " ON CONFLICT (card_no, offline_counter) DO NOTHING", *[list(c) for c in cols])
    kept = await conn.fetch(
        "SELECT v.* FROM offline_visitor_records v JOIN unnest($1::bigint[], $2::int[]) AS k(c, n)"
        " ON v.card_no = k.c AND v.offline_counter = k.n", list(cols[0]), list(cols[1]))
    by_key = {(r["card_no"], r["offline_counter"]): tuple(r[c] for c in VISITOR_COLUMNS[:-1]) for r in kept}
    return [by_key.get((row[0], row[1])) == (*row[:8], bytes(row[8]), *row[9:11]) for row in rows]
