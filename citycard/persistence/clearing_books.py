"""The clearing house's figures booked into the city's own tables (migration 0012;
docs/clearing.md, "The city's books"), and reconciled against what the city sent and charged.

After the house closes a window the city fetches its report (public) and the records cleared
against its own cards (signed with the city's key), and ``import_window`` stores, in ONE
transaction: its statement (net position, interchange, chargebacks), each chargeback that
concerns it with the issuer's reason (as acquirer a *loss line*, with the operator it paid for
the ride; settlement_lines never change), and a discrepancy report. Importing the same report
again changes nothing (ALREADY); a different report for an imported window is refused.

``read_imported(conn, window)`` is what an audit calls to read the figures back.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

import asyncpg

from ..domain.clearing_records import ClearingRecord
from ..interop.store import remote_terminal_id

FIGURES = ("receivable_gross_fen", "receivable_records", "acquirer_fees_fen", "payable_gross_fen", "payable_records",
           "issuer_fees_fen", "chargebacks_received_fen", "chargebacks_paid_fen", "net_fen")


class ImportCode(IntEnum):
    OK = 0  # imported now
    ALREADY = 1  # this report was imported before: nothing changed
    CONFLICT = 2  # another report was imported for the window: refused, nothing changed
    NOT_PARTICIPANT = 3  # the report has no statement for this city


@dataclass(frozen=True, slots=True)
class HouseFigures:
    """What the house says of one closed window: its report (as ``GET /windows/{w}/report``
    answers it) and, when fetched, the records cleared against the city's own cards."""

    city: str
    window: str
    report: dict[str, Any]
    issuer_records: list[ClearingRecord] | None = None


@dataclass(frozen=True, slots=True)
class ChargebackLine:
    record_id: str
    role: str  # "acquirer": this city pays it back (a loss); "issuer": it is paid back
    issuer: str
    acquirer: str
    amount_fen: int  # the record's gross; the money moved is in the statement (less the issuer's fee, per pair)
    reason: str
    terminal_id: int | None = None
    terminal_seq: int | None = None
    counterparty_id: str | None = None  # the operator this city paid for the ride


@dataclass(frozen=True, slots=True)
class BookDiscrepancy:
    what: str
    record_id: str | None = None
    expected_fen: int = 0  # the city's own books
    found_fen: int = 0  # the house's figures
    expected_count: int = 0
    found_count: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Imported:
    code: ImportCode
    window: str
    city: str = ""
    statement: dict[str, int] = field(default_factory=dict)
    sent_records: int = 0
    sent_fen: int = 0
    chargebacks: list[ChargebackLine] = field(default_factory=list)
    discrepancies: list[BookDiscrepancy] = field(default_factory=list)

    @property
    def loss_fen(self) -> int:
        """What the house took back from this city as acquirer (its rides' operators were paid)."""
        return self.statement.get("chargebacks_paid_fen", 0)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code.name, "window": self.window, "city": self.city, "statement": self.statement,
                "sent_records": self.sent_records, "sent_fen": self.sent_fen, "loss_fen": self.loss_fen,
                "chargebacks": [asdict(c) for c in self.chargebacks],
                "discrepancies": [asdict(d) for d in self.discrepancies]}


def fetch(base: str, city: str, window: str, key: Any = None) -> HouseFigures:
    """The closed window's report (public) and, with the city's signing key, the records cleared
    against its cards (signed request). CityCardError if the house does not answer or the
    window is not closed there."""
    from ..clearing import client
    from ..errors import CityCardError
    from ..protocols.clearing_files import parse_csv

    status, report = client.report(base, window)
    if status != 200:
        raise CityCardError(f"the clearing house has no closed report of {window} ({status}):"
                            f" {report.get('code')}: {report.get('reason')}")
    records = None
    if key is not None:
        status, data = client.records(base, key, city, window)
        if status != 200:
            raise CityCardError(f"the clearing house refused {city}'s records of {window} ({status}): {data[:200]!r}")
        records = parse_csv(data, f"{city}-{window}.csv")
    return HouseFigures(city, window, report, records)


def report_digest(report: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(report, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _terminal_of(record_id: str) -> tuple[int | None, int | None]:
    parts = record_id.split(":")
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None, None


def reconcile_statement(statement: dict[str, int], sent: Sequence[ClearingRecord]) -> list[BookDiscrepancy]:
    """Pure: what the city sent as acquirer against the house's statement of it, and the
    statement's own arithmetic (its net is the sum of its parts)."""
    out = []
    sent_fen, sent_n = sum(r.amount_fen for r in sent), len(sent)
    got_fen, got_n = statement["receivable_gross_fen"], statement["receivable_records"]
    if (sent_fen, sent_n) != (got_fen, got_n):
        out.append(BookDiscrepancy("acquirer_cleared", None, sent_fen, got_fen, sent_n, got_n,
                                   "expected: this city's clearing export; found: what the house cleared of it"
                                   " (records rejected at delivery, or a delivery not made)"))
    parts = (statement["receivable_gross_fen"] - statement["acquirer_fees_fen"] - statement["payable_gross_fen"]
             + statement["issuer_fees_fen"] + statement["chargebacks_received_fen"]
             - statement["chargebacks_paid_fen"])
    if parts != statement["net_fen"]:
        out.append(BookDiscrepancy("statement_net", None, parts, statement["net_fen"], 0, 0,
                                   "expected: the statement's parts added up; found: its net"))
    return out


async def _issuer_side(conn: asyncpg.Connection, statement: dict[str, int],
                       records: list[ClearingRecord]) -> list[BookDiscrepancy]:
    """The records cleared against this city's cards, against its own journal: each online one
    is an OK row of the acquirer's terminal (interop slot) for the same amount."""
    out = []
    fen, n = sum(r.amount_fen for r in records), len(records)
    if (fen, n) != (statement["payable_gross_fen"], statement["payable_records"]):
        out.append(BookDiscrepancy("issuer_records", None, fen, statement["payable_gross_fen"], n,
                                   statement["payable_records"], "expected: the records the house lists against"
                                   " this city's cards; found: its statement as issuer"))
    slots = {r["code"]: r["slot"] for r in await conn.fetch("SELECT code, slot FROM interop_acquirers")}
    online = [r for r in records if r.kind == "online"]
    keys = [(remote_terminal_id(slots[r.acquirer], r.terminal_id), r.terminal_seq) if r.acquirer in slots else None
            for r in online]
    wanted = [k for k in keys if k is not None]
    charged = {(r[0], r[1]): r[2] for r in await conn.fetch(
        "SELECT j.terminal_id, j.seq, sum(j.amount_fen)::bigint FROM journal j"
        " JOIN unnest($1::bigint[], $2::bigint[]) AS k(t, s) ON j.terminal_id = k.t AND j.seq = k.s"
        " WHERE j.result = 0 GROUP BY 1, 2", [k[0] for k in wanted], [k[1] for k in wanted])}
    for r, k in zip(online, keys, strict=True):
        got = charged.get(k) if k is not None else None
        if got is None:
            out.append(BookDiscrepancy("issuer_not_charged", r.record_id, 0, r.amount_fen, 0, 1,
                                       "the house lists this tap against this city's card; its journal has no"
                                       " OK row of it"))
        elif got != r.amount_fen:
            out.append(BookDiscrepancy("issuer_amount", r.record_id, got, r.amount_fen, 1, 1,
                                       "expected: what this city's journal charged; found: the cleared amount"))
    return out


async def _chargebacks(conn: asyncpg.Connection, city: str, report: dict[str, Any]) -> list[ChargebackLine]:
    out = []
    for c in report.get("charged_back", []):
        role = "acquirer" if c["acquirer"] == city else "issuer" if c["issuer"] == city else None
        if role is None:
            continue
        terminal, seq = _terminal_of(c["record_id"]) if role == "acquirer" else (None, None)
        cp = None
        if terminal is not None:
            cp = await conn.fetchval("SELECT counterparty_id FROM terminal_counterparty WHERE terminal_id = $1",
                                     terminal)
        out.append(ChargebackLine(c["record_id"], role, c["issuer"], c["acquirer"], int(c["amount_fen"]),
                                  c["reason"], terminal, seq, cp))
    return out


async def _unknown_chargebacks(conn: asyncpg.Connection, lines: list[ChargebackLine]) -> list[BookDiscrepancy]:
    """A chargeback against this city for a record its own tables do not hold."""
    out = []
    for c in lines:
        if c.role != "acquirer" or c.terminal_id is None:
            continue
        held = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM remote_taps WHERE terminal_id = $1 AND seq = $2)"
            " OR EXISTS (SELECT 1 FROM standin_taps WHERE terminal_id = $1 AND seq = $2)"
            " OR EXISTS (SELECT 1 FROM offline_visitor_records WHERE terminal_id = $1 AND terminal_seq = $2)"
            " OR EXISTS (SELECT 1 FROM offline_records WHERE terminal_id = $1 AND terminal_seq = $2)",
            c.terminal_id, c.terminal_seq)
        if not held:
            out.append(BookDiscrepancy("chargeback_unknown_record", c.record_id, 0, c.amount_fen, 0, 1,
                                       "charged back to this city for a record its tables do not hold"))
    return out


async def import_window(conn: asyncpg.Connection, figures: HouseFigures,
                        sent: Sequence[ClearingRecord]) -> Imported:
    """Book the house's closed report of ``figures.window`` for ``figures.city`` (``sent``: the
    records of this city's own clearing export of the window) in one transaction."""
    report, city, window = figures.report, figures.city, figures.window
    if report.get("window") != window:
        raise ValueError(f"the report is of window {report.get('window')!r}, not {window}")
    st = report.get("statements", {}).get(city)
    if st is None:
        return Imported(ImportCode.NOT_PARTICIPANT, window, city)
    statement = {k: int(st[k]) for k in FIGURES}
    digest = report_digest(report)
    async with conn.transaction():
        there = await conn.fetchrow("SELECT city, report_sha256 FROM clearing_books WHERE window_id = $1 FOR UPDATE",
                                    window)
        if there is not None:
            got = await read_imported(conn, window)
            assert got is not None
            same = (there["city"], there["report_sha256"]) == (city, digest)
            return Imported(ImportCode.ALREADY if same else ImportCode.CONFLICT, *_rest(got))
        lines = await _chargebacks(conn, city, report)
        found = reconcile_statement(statement, sent) + await _unknown_chargebacks(conn, lines)
        if figures.issuer_records is not None:
            found += await _issuer_side(conn, statement, figures.issuer_records)
        await conn.execute(
            f"INSERT INTO clearing_books (window_id, city, {', '.join(FIGURES)}, sent_records, sent_fen,"
            " report_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            window, city, *(statement[k] for k in FIGURES), len(sent), sum(r.amount_fen for r in sent), digest)
        await conn.executemany(
            "INSERT INTO clearing_chargebacks (record_id, window_id, role, issuer, acquirer, amount_fen, reason,"
            " terminal_id, terminal_seq, counterparty_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [(c.record_id, window, c.role, c.issuer, c.acquirer, c.amount_fen, c.reason, c.terminal_id,
              c.terminal_seq, c.counterparty_id) for c in lines])
        await conn.executemany(
            "INSERT INTO clearing_discrepancies (window_id, what, record_id, expected_fen, found_fen, expected_count,"
            " found_count, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [(window, d.what, d.record_id, d.expected_fen, d.found_fen, d.expected_count, d.found_count, d.detail)
             for d in found])
        got = await read_imported(conn, window)
        assert got is not None
        return Imported(ImportCode.OK, *_rest(got))


def _rest(i: Imported) -> tuple[Any, ...]:
    return (i.window, i.city, i.statement, i.sent_records, i.sent_fen, i.chargebacks, i.discrepancies)


async def read_imported(conn: asyncpg.Connection, window: str) -> Imported | None:
    """The figures imported for ``window`` (None: not imported): what the region lab's audit
    compares with the house."""
    b = await conn.fetchrow("SELECT * FROM clearing_books WHERE window_id = $1", window)
    if b is None:
        return None
    lines = [ChargebackLine(r["record_id"], r["role"], r["issuer"], r["acquirer"], r["amount_fen"], r["reason"],
                            r["terminal_id"], r["terminal_seq"], r["counterparty_id"]) for r in await conn.fetch(
        "SELECT * FROM clearing_chargebacks WHERE window_id = $1 ORDER BY record_id", window)]
    found = [BookDiscrepancy(r["what"], r["record_id"], r["expected_fen"], r["found_fen"], r["expected_count"],
                             r["found_count"], r["detail"]) for r in await conn.fetch(
        "SELECT * FROM clearing_discrepancies WHERE window_id = $1 ORDER BY what, record_id NULLS FIRST", window)]
    return Imported(ImportCode.OK, window, b["city"], {k: int(b[k]) for k in FIGURES}, b["sent_records"],
                    b["sent_fen"], lines, found)


async def import_from_house(conn: asyncpg.Connection, base: str, city: str, window: str,
                            sent: Sequence[ClearingRecord], key: Any = None) -> Imported:
    """``fetch`` (in a thread) then ``import_window``: one call for a city or the region lab."""
    import asyncio

    figures = await asyncio.to_thread(fetch, base, city, window, key)
    return await import_window(conn, figures, sent)


def differences(imported: Imported, statement: Any) -> dict[str, tuple[int, int]]:
    """Figure -> (the city's imported books, the house's statement) where they differ; the
    statement a dataclass (domain Statement) or a dict (the house's JSON). Empty: equal."""
    house = {k: int(statement[k] if isinstance(statement, dict) else getattr(statement, k)) for k in FIGURES}
    return {k: (imported.statement.get(k, 0), house[k]) for k in FIGURES if imported.statement.get(k, 0) != house[k]}


async def losses(conn: asyncpg.Connection, window: str) -> dict[str | None, int]:
    """The acquirer's loss lines of a window by the operator it paid (None: no operator): the
    gross of its records charged back (the money returned is the statement's chargebacks_paid_fen)."""
    return {r[0]: int(r[1]) for r in await conn.fetch(
        "SELECT counterparty_id, sum(amount_fen) FROM clearing_chargebacks WHERE window_id = $1 AND role = 'acquirer'"
        " GROUP BY 1 ORDER BY 1 NULLS FIRST", window)}
