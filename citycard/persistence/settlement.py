"""Settlement inside a city on Postgres (docs/settlement.md): counterparties, their terminals,
windows, and the close that aggregates, reconciles and writes a window's lines in ONE
transaction. The arithmetic is domain/settlement.py's.

A window books the journal's charged taps (result OK, not card-service ops) *applied* in
[start_ms, end_ms) and the offline records *received* in it: the host's own clock, so a late
upload lands in the window open when it arrives and every tap is settled once.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from ..domain.offline_book import OfflineCode
from ..domain.results import Result
from ..domain.settlement import (
    COUNTERPARTY_ID,
    KINDS,
    MS_PER_DAY,
    SUBSIDY_KINDS,
    Aggregate,
    Line,
    RideGroup,
    SettleCode,
    SubsidyRow,
    close_step,
    day_of,
    lines_of,
    settle_step,
    subsidy_basis,
)
from ..domain.tables import FareTables
from ..interop.store import REMOTE_TERMINAL_BASE
from . import settlement_visitors as visitors
from .settlement_visitors import RECEIVED_WHERE

MAX_TERMINALS_PER_ATTACH = 10_000
MAX_NAME_CHARS = 200
_OK = int(Result.OK)
JOURNALED_CODES = [int(OfflineCode.ACCEPTED), int(OfflineCode.BALANCE_IMPOSSIBLE)]  # offline money
KEPT_CODES = [*JOURNALED_CODES, int(OfflineCode.FORWARDED)]  # an upload's records kept here (a visitor's: FORWARDED)
TAP_WHERE = "j.result = 0 AND j.op_key IS NULL AND j.applied_ms >= $1 AND j.applied_ms < $2"


@dataclass(frozen=True, slots=True)
class Discrepancy:
    what: str
    counterparty_id: str | None = None
    terminal_id: int | None = None
    expected_fen: int = 0
    found_fen: int = 0
    expected_count: int = 0
    found_count: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Closing:
    code: SettleCode
    window_id: str
    state: str
    start_ms: int = 0
    end_ms: int = 0
    lines: list[Line] = field(default_factory=list)
    discrepancies: list[Discrepancy] = field(default_factory=list)


def check_counterparty(counterparty_id: str, kind: str, name: str, commission_bp: int) -> None:
    """Bad input raises ValueError naming the limit."""
    if not COUNTERPARTY_ID.match(counterparty_id):
        raise ValueError(f"a counterparty id is 1..40 of a-z 0-9 _ - (starting a-z0-9); got {counterparty_id[:50]!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise ValueError(f"name must be 1..{MAX_NAME_CHARS} characters")
    if not 0 <= commission_bp <= 10_000:
        raise ValueError(f"commission_bp must be 0..10000; got {commission_bp}")


async def add_counterparty(conn: asyncpg.Connection, counterparty_id: str, kind: str, name: str,
                           commission_bp: int) -> SettleCode:
    """OK when new; ALREADY when registered with the same terms; COUNTERPARTY_CONFLICT if not."""
    check_counterparty(counterparty_id, kind, name, commission_bp)
    done = await conn.fetchval(
        "INSERT INTO counterparties (counterparty_id, kind, name, commission_bp) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (counterparty_id) DO NOTHING RETURNING counterparty_id", counterparty_id, kind, name, commission_bp)
    if done is not None:
        return SettleCode.OK
    there = await conn.fetchrow("SELECT kind, name, commission_bp FROM counterparties WHERE counterparty_id = $1",
                                counterparty_id)
    same = there is not None and (there["kind"], there["name"], there["commission_bp"]) == (kind, name, commission_bp)
    return SettleCode.ALREADY if same else SettleCode.COUNTERPARTY_CONFLICT


async def attach(conn: asyncpg.Connection, counterparty_id: str,
                 terminal_ids: Sequence[int]) -> tuple[SettleCode, list[int]]:
    """Attach terminals (all or none). (TERMINAL_TAKEN, the ones attached elsewhere),
    (UNKNOWN_COUNTERPARTY, []), or (OK, the ones newly attached)."""
    ids = sorted(set(terminal_ids))
    if not 1 <= len(ids) <= MAX_TERMINALS_PER_ATTACH or any(not 0 < t < 2**63 for t in ids):
        raise ValueError(f"1..{MAX_TERMINALS_PER_ATTACH} positive terminal ids per attach")
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM counterparties WHERE counterparty_id = $1 FOR SHARE",
                               counterparty_id) is None:
            return SettleCode.UNKNOWN_COUNTERPARTY, []
        taken = [r[0] for r in await conn.fetch(
            "SELECT terminal_id FROM terminal_counterparty WHERE terminal_id = ANY($1::bigint[])"
            " AND counterparty_id <> $2 ORDER BY 1", ids, counterparty_id)]
        if taken:
            return SettleCode.TERMINAL_TAKEN, taken
        new = await conn.fetch(
            "INSERT INTO terminal_counterparty (terminal_id, counterparty_id) SELECT t, $2 FROM unnest($1::bigint[]) t"
            " ON CONFLICT (terminal_id) DO NOTHING RETURNING terminal_id", ids, counterparty_id)
    return SettleCode.OK, sorted(r[0] for r in new)


async def open_window(conn: asyncpg.Connection, window_id: str, start_ms: int, end_ms: int) -> SettleCode:
    """OK when made now, ALREADY when it exists with these bounds; other bounds: ValueError."""
    if not start_ms < end_ms:
        raise ValueError("a window needs start_ms < end_ms")
    made = await conn.fetchval(
        "INSERT INTO settlement_windows (window_id, start_ms, end_ms) VALUES ($1, $2, $3)"
        " ON CONFLICT (window_id) DO NOTHING RETURNING window_id", window_id, start_ms, end_ms)
    if made is not None:
        return SettleCode.OK
    there = await conn.fetchrow("SELECT start_ms, end_ms FROM settlement_windows WHERE window_id = $1", window_id)
    if (there["start_ms"], there["end_ms"]) != (start_ms, end_ms):
        raise ValueError(f"window {window_id} exists as [{there['start_ms']}, {there['end_ms']}), not"
                         f" [{start_ms}, {end_ms})")
    return SettleCode.ALREADY


async def close_window(conn: asyncpg.Connection, tables: FareTables, window_id: str, start_ms: int, end_ms: int,
                       now_ms: int, utc_offset_ms: int) -> Closing:
    """Close the window (opening it first if need be): lines, discrepancies and the subsidy
    basis written in one transaction. Closed already: the stored lines, nothing recomputed."""
    await open_window(conn, window_id, start_ms, end_ms)
    async with conn.transaction(isolation="repeatable_read"):
        state = await conn.fetchval("SELECT state FROM settlement_windows WHERE window_id = $1 FOR UPDATE", window_id)
        code, after = close_step(state, now_ms, end_ms)
        if code != SettleCode.OK:
            return await _stored(conn, window_id, code)
        bp = {r[0]: r[1] for r in await conn.fetch("SELECT counterparty_id, commission_bp FROM counterparties")}
        lines = lines_of(await _aggregates(conn, start_ms, end_ms), bp)
        groups = await _ride_groups(conn, start_ms, end_ms, utc_offset_ms)
        subsidy = subsidy_basis(tables, groups, start_ms)
        found = await reconcile(conn, start_ms, end_ms)
        for table in ("settlement_lines", "settlement_discrepancies", "subsidy_basis"):
            await conn.execute(f"DELETE FROM {table} WHERE window_id = $1", window_id)  # a crashed close's rows
        await conn.executemany(
            "INSERT INTO settlement_lines (window_id, counterparty_id, taps, gross_fen, commission_fen, net_fen,"
            " online_fen, offline_fen, visitor_online_fen, visitor_offline_fen)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [(window_id, ln.counterparty_id, ln.taps, ln.gross_fen, ln.commission_fen, ln.net_fen, ln.online_fen,
              ln.offline_fen, ln.visitor_online_fen, ln.visitor_offline_fen) for ln in lines])
        await conn.executemany(
            "INSERT INTO settlement_discrepancies (window_id, counterparty_id, terminal_id, what, expected_fen,"
            " found_fen, expected_count, found_count, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [(window_id, d.counterparty_id, d.terminal_id, d.what, d.expected_fen, d.found_fen, d.expected_count,
              d.found_count, d.detail) for d in found])
        await conn.executemany(
            "INSERT INTO subsidy_basis (window_id, counterparty_id, kind, route, category, day, taps, full_fen,"
            " charged_fen, concession_fen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [(window_id, s.counterparty_id, s.kind, s.route, s.category, day_of(s.day), s.taps, s.full_fen,
              s.charged_fen, s.concession_fen) for s in subsidy])
        await conn.execute("UPDATE settlement_windows SET state = $2, closed_at = now() WHERE window_id = $1",
                           window_id, after)
        return await _stored(conn, window_id, SettleCode.OK)


async def settle_window(conn: asyncpg.Connection, window_id: str) -> SettleCode:
    async with conn.transaction():
        state = await conn.fetchval("SELECT state FROM settlement_windows WHERE window_id = $1 FOR UPDATE", window_id)
        if state is None:
            return SettleCode.UNKNOWN_WINDOW
        code, after = settle_step(state)
        if code == SettleCode.OK:
            await conn.execute("UPDATE settlement_windows SET state = $2, settled_at = now() WHERE window_id = $1",
                               window_id, after)
    return code


async def show(conn: asyncpg.Connection, window_id: str) -> Closing:
    return await _stored(conn, window_id, SettleCode.OK)


async def _stored(conn: asyncpg.Connection, window_id: str, code: SettleCode) -> Closing:
    w = await conn.fetchrow("SELECT state, start_ms, end_ms FROM settlement_windows WHERE window_id = $1", window_id)
    if w is None:
        return Closing(SettleCode.UNKNOWN_WINDOW, window_id, "")
    lines = [Line(*r) for r in await conn.fetch(
        "SELECT counterparty_id, taps, gross_fen, commission_fen, net_fen, online_fen, offline_fen,"
        " visitor_online_fen, visitor_offline_fen FROM settlement_lines WHERE window_id = $1 ORDER BY counterparty_id", window_id)]
    found = [Discrepancy(r["what"], r["counterparty_id"], r["terminal_id"], r["expected_fen"], r["found_fen"],
                         r["expected_count"], r["found_count"], r["detail"]) for r in await conn.fetch(
        "SELECT * FROM settlement_discrepancies WHERE window_id = $1"
        " ORDER BY what, counterparty_id NULLS FIRST, terminal_id NULLS FIRST, detail", window_id)]
    return Closing(code, window_id, w["state"], w["start_ms"], w["end_ms"], lines, found)


async def subsidy(conn: asyncpg.Connection, window_id: str) -> list[tuple[SubsidyRow, str]]:
    """The window's subsidy basis rows, each with its day as YYYY-MM-DD."""
    rows = await conn.fetch(
        "SELECT counterparty_id, kind, route, category, day, taps, full_fen, charged_fen, concession_fen"
        " FROM subsidy_basis WHERE window_id = $1 ORDER BY counterparty_id, kind, route, category, day", window_id)
    return [(SubsidyRow(r[0], r[1], r[2], r[3], (r[4] - day_of(0)).days, r[5], r[6], r[7], r[8]), r[4].isoformat())
            for r in rows]


async def _aggregates(conn: asyncpg.Connection, start_ms: int, end_ms: int) -> list[Aggregate]:
    acc: dict[str, list[int]] = {}
    for r in await conn.fetch(
            "SELECT tc.counterparty_id, count(*), coalesce(sum(j.amount_fen), 0)::bigint FROM journal j"
            f" JOIN terminal_counterparty tc ON tc.terminal_id = j.terminal_id WHERE {TAP_WHERE} GROUP BY 1",
            start_ms, end_ms):
        acc.setdefault(r[0], [0, 0, 0, 0])[0:2] = [r[1], r[2]]
    for r in await conn.fetch(
            "SELECT tc.counterparty_id, count(*), coalesce(sum(o.amount_fen), 0)::bigint FROM offline_records o"
            f" JOIN terminal_counterparty tc ON tc.terminal_id = o.terminal_id WHERE {RECEIVED_WHERE}"
            " AND o.code = ANY($3::smallint[]) GROUP BY 1", start_ms, end_ms, JOURNALED_CODES):
        acc.setdefault(r[0], [0, 0, 0, 0])[2:4] = [r[1], r[2]]
    seen = await visitors.aggregates(conn, start_ms, end_ms)
    return [Aggregate(cp, *acc.get(cp, [0, 0, 0, 0]), *seen.get(cp, [0, 0, 0, 0])) for cp in sorted({*acc, *seen})]


async def _ride_groups(conn: asyncpg.Connection, start_ms: int, end_ms: int, utc_offset_ms: int) -> list[RideGroup]:
    kinds = sorted(SUBSIDY_KINDS)
    online = await conn.fetch(
        "SELECT tc.counterparty_id, j.kind, j.route, coalesce(c.category, -1),"
        " (j.tap_time_ms + $3) / $4, j.fare_version, count(*), coalesce(sum(j.amount_fen), 0)::bigint FROM journal j"
        " JOIN terminal_counterparty tc ON tc.terminal_id = j.terminal_id LEFT JOIN cards c ON c.card_no = j.card_no"
        f" WHERE {TAP_WHERE} AND j.kind = ANY($5::smallint[]) GROUP BY 1, 2, 3, 4, 5, 6",
        start_ms, end_ms, utc_offset_ms, MS_PER_DAY, kinds)
    offline = await conn.fetch(
        "SELECT tc.counterparty_id, o.kind, o.route, coalesce(c.category, -1),"
        " to_date((o.tx_when / 1000000)::text, 'YYYYMMDD') - date '1970-01-01', 0, count(*),"
        " coalesce(sum(o.amount_fen), 0)::bigint FROM offline_records o"
        " JOIN terminal_counterparty tc ON tc.terminal_id = o.terminal_id LEFT JOIN cards c ON c.card_no = o.card_no"
        f" WHERE {RECEIVED_WHERE} AND o.code = ANY($3::smallint[]) AND o.kind = ANY($4::smallint[])"
        " GROUP BY 1, 2, 3, 4, 5", start_ms, end_ms, JOURNALED_CODES, kinds)
    return [RideGroup(r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6], r[7]) for r in [*online, *offline]]


async def reconcile(conn: asyncpg.Connection, start_ms: int, end_ms: int) -> list[Discrepancy]:
    """What does not agree: each attached terminal's running totals (terminals.taps and
    charged_fen, as its session last flushed them: lifetime figures) against its journal rows;
    the window's charged taps (visitors' too) on terminals attached to no counterparty; each
    offline upload booked in the window (its records journaled here and those kept for their
    issuer) against the codes its batch was answered with (ACCEPTED, BALANCE_IMPOSSIBLE, FORWARDED)."""
    out: list[Discrepancy] = []
    for r in await conn.fetch(
            "SELECT tc.terminal_id, tc.counterparty_id, t.taps, t.charged_fen, coalesce(j.n, 0) AS n,"
            " coalesce(j.fen, 0) AS fen FROM terminal_counterparty tc"
            " LEFT JOIN terminals t ON t.terminal_id = tc.terminal_id LEFT JOIN ("
            "  SELECT terminal_id, count(*) AS n, coalesce(sum(amount_fen) FILTER (WHERE result = $1), 0)::bigint AS fen"
            "  FROM journal WHERE op_key IS NULL AND terminal_id IN (SELECT terminal_id FROM terminal_counterparty)"
            "  GROUP BY 1) j ON j.terminal_id = tc.terminal_id ORDER BY 1", _OK):
        if r["taps"] is None:
            if r["n"]:
                out.append(Discrepancy("terminal_unregistered", r[1], r[0], 0, r["fen"], 0, r["n"],
                                       "journal rows from a terminal not in terminals"))
        elif (r["charged_fen"], r["taps"]) != (r["fen"], r["n"]):
            out.append(Discrepancy("terminal_totals", r[1], r[0], r["fen"], r["charged_fen"], r["n"], r["taps"],
                                   "expected: the journal (lifetime); found: what the terminal's session reported"))
    for r in await conn.fetch(
            "SELECT j.terminal_id, count(*), coalesce(sum(j.amount_fen), 0)::bigint FROM journal j"
            f" WHERE {TAP_WHERE} AND j.amount_fen <> 0 AND j.terminal_id < $3 AND NOT EXISTS (SELECT 1"
            " FROM terminal_counterparty tc WHERE tc.terminal_id = j.terminal_id) GROUP BY 1 ORDER BY 1",
            start_ms, end_ms, REMOTE_TERMINAL_BASE):  # this city's cards charged elsewhere: owed through clearing
        out.append(Discrepancy("unattributed", None, r[0], 0, r[2], 0, r[1], "charged taps, no counterparty"))
    for terminal, n, fen in await visitors.unattributed(conn, start_ms, end_ms):
        out.append(Discrepancy("unattributed", None, terminal, 0, fen, 0, n, "visitors' charged rides, no counterparty"))
    for r in await conn.fetch(
            "SELECT o.terminal_id, o.batch_seq, count(*) AS n, sum(o.amount_fen)::bigint AS fen, b.codes IS NULL AS missing,"
            " (SELECT count(*) FROM unnest(b.codes) x WHERE x = ANY($3::smallint[])) AS journaled,"
            " (SELECT counterparty_id FROM terminal_counterparty tc WHERE tc.terminal_id = o.terminal_id) AS cp"
            " FROM (SELECT terminal_id, batch_seq, amount_fen, received_at FROM offline_records UNION ALL"
            "  SELECT terminal_id, batch_seq, amount_fen, received_at FROM offline_visitor_records) o"
            " LEFT JOIN offline_batches b ON b.terminal_id = o.terminal_id AND b.batch_seq = o.batch_seq"
            f" WHERE {RECEIVED_WHERE} GROUP BY o.terminal_id, o.batch_seq, b.codes ORDER BY 1, 2",
            start_ms, end_ms, KEPT_CODES):
        if r["missing"]:
            out.append(Discrepancy("offline_batch_missing", r["cp"], r[0], 0, r["fen"], 0, r["n"],
                                   f"batch {r['batch_seq']}: records with no answered upload"))
        elif r["journaled"] != r["n"]:
            out.append(Discrepancy("offline_batch_count", r["cp"], r[0], 0, r["fen"], r["journaled"], r["n"],
                                   f"batch {r['batch_seq']}: codes journaled or forwarded vs records kept"))
    return out
