"""The offline records' tables (migration 0007): each call runs in the caller's transaction.

Lock order: a writer of a card's offline state takes its offline_cards row lock first, every
card of a group in card order (``lock_cards``), so two writers never wait on each other in a
cycle; what is journaled under a locked card cannot change until commit.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from ..domain.offline import OfflineRecord
from ..domain.offline_book import WINDOW, CardShadow
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


async def lock_cards(conn: asyncpg.Connection, card_nos: Iterable[int]) -> dict[int, CardShadow]:
    """The shadows of the issued cards among ``card_nos``, their rows locked in card order (a
    card new to offline gets its row). Cards not issued are absent."""
    cards = sorted(set(card_nos))
    if not cards:
        return {}
    sql = ("SELECT card_no, last_counter, loaded_fen, spent_fen, seen, missing FROM offline_cards"
           " WHERE card_no = ANY($1::bigint[]) ORDER BY card_no FOR UPDATE")
    rows = list(await conn.fetch(sql, cards))
    if len(rows) < len(cards):  # cards new to offline: their rows made (issued cards only), then locked
        have = {r["card_no"] for r in rows}
        new = [c for c in cards if c not in have]
        await conn.execute(
            "INSERT INTO offline_cards (card_no) SELECT card_no FROM cards WHERE card_no = ANY($1::bigint[])"
            " ORDER BY card_no ON CONFLICT DO NOTHING", new)
        rows += await conn.fetch(sql, new)
    return {r["card_no"]: CardShadow(r["card_no"], r["last_counter"], r["loaded_fen"], r["spent_fen"],
                                     int.from_bytes(r["seen"], "big"), r["missing"]) for r in rows}


async def save_shadows(conn: asyncpg.Connection, shadows: Sequence[CardShadow]) -> None:
    if not shadows:
        return
    await conn.execute(
        "UPDATE offline_cards o SET last_counter = u.last_counter, loaded_fen = u.loaded_fen,"
        " spent_fen = u.spent_fen, seen = u.seen, missing = u.missing, updated_at = now()"
        " FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::bytea[], $6::int[])"
        " AS u(card_no, last_counter, loaded_fen, spent_fen, seen, missing) WHERE o.card_no = u.card_no",
        [s.card_no for s in shadows], [s.last_counter for s in shadows], [s.loaded_fen for s in shadows],
        [s.spent_fen for s in shadows], [s.seen.to_bytes(_SEEN_BYTES, "big") for s in shadows],
        [s.missing for s in shadows])


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
    r = await conn.fetchrow("SELECT * FROM offline_cards WHERE card_no = $1", card_no)
    if r is None:
        return None
    return CardShadow(card_no, r["last_counter"], r["loaded_fen"], r["spent_fen"], int.from_bytes(r["seen"], "big"),
                      r["missing"])


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
