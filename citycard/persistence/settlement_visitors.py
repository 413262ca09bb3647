"""Visitors' rides in the in-city settlement (docs/settlement.md, "Visitors"): other issuers'
cards on this city's terminals. The operator of the terminal is owed them like any ride; the
city (the acquirer) collects from the card's issuer through regional clearing, and bears what
the issuer refuses (a declined stand-in, a chargeback) as its own loss.

- online: each (terminal, seq) once, by the host's clock: a stand-in approval (``standin_taps``,
  by ``approved_ms``, whatever the issuer decides later: the terminal was told OK), else a tap
  its issuer decided OK over the link (``remote_taps``, by ``answered_ms``, for ``fare_fen``);
- offline: the records kept for their issuer (``offline_visitor_records``, by ``received_at``;
  a (card, counter) also journaled in ``offline_records`` is booked there, once).

Visitors' journal rows at the issuer (terminal ids from ``interop.store.REMOTE_TERMINAL_BASE``
up) are the other way round: this city's cards charged in another city, owed to that city
through clearing, never to an operator here.
"""

import asyncpg

from ..domain.results import Result
from ..domain.settlement import when_digits
from ..protocols.settlement_files import Row

# a record received (the host's clock) in [$1, $2) ms: settlement.py books offline records so too
RECEIVED_WHERE = "o.received_at >= to_timestamp($1 / 1000.0) AND o.received_at < to_timestamp($2 / 1000.0)"

_OK = int(Result.OK)
# (terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen) of the visitors' online rides in [$1, $2):
# stand-in approvals (the terminal heard OK) and the issuer's OK answers; a void (refused_code set:
# the terminal was refused) is no ride, and the city collects nothing for it
ONLINE_SQL = (
    "SELECT s.terminal_id::bigint AS terminal_id, s.seq, s.card_no, s.kind, s.route, s.tap_time_ms, s.amount_fen"
    " FROM standin_taps s WHERE s.refused_code IS NULL AND s.approved_ms >= $1 AND s.approved_ms < $2"
    " UNION ALL"
    " SELECT r.terminal_id::bigint, r.seq, r.card_no, r.kind, r.route, r.tap_time_ms, r.fare_fen FROM remote_taps r"
    f" WHERE r.result = {_OK} AND r.answered_ms >= $1 AND r.answered_ms < $2"
    " AND NOT EXISTS (SELECT 1 FROM standin_taps s WHERE s.terminal_id = r.terminal_id AND s.seq = r.seq"
    " AND s.refused_code IS NULL)")
OFFLINE_SQL = (
    "SELECT o.card_no, o.offline_counter, o.amount_fen, o.kind, o.route, o.terminal_id, o.tx_when, o.batch_seq"
    f" FROM offline_visitor_records o WHERE {RECEIVED_WHERE}"
    " AND NOT EXISTS (SELECT 1 FROM offline_records j WHERE j.card_no = o.card_no"
    " AND j.offline_counter = o.offline_counter)")


async def aggregates(conn: asyncpg.Connection, start_ms: int, end_ms: int) -> dict[str, list[int]]:
    """counterparty -> [online taps, online fen, offline taps, offline fen] of visitors' rides."""
    acc: dict[str, list[int]] = {}
    for r in await conn.fetch(
            "SELECT tc.counterparty_id, count(*), coalesce(sum(v.amount_fen), 0)::bigint FROM"
            f" ({ONLINE_SQL}) v JOIN terminal_counterparty tc ON tc.terminal_id = v.terminal_id GROUP BY 1",
            start_ms, end_ms):
        acc.setdefault(r[0], [0, 0, 0, 0])[0:2] = [r[1], r[2]]
    for r in await conn.fetch(
            "SELECT tc.counterparty_id, count(*), coalesce(sum(v.amount_fen), 0)::bigint FROM"
            f" ({OFFLINE_SQL}) v JOIN terminal_counterparty tc ON tc.terminal_id = v.terminal_id GROUP BY 1",
            start_ms, end_ms):
        acc.setdefault(r[0], [0, 0, 0, 0])[2:4] = [r[1], r[2]]
    return acc


async def unattributed(conn: asyncpg.Connection, start_ms: int, end_ms: int) -> list[tuple[int, int, int]]:
    """(terminal, rides, fen) of visitors' charged rides on terminals attached to nobody."""
    rows = await conn.fetch(
        "SELECT v.terminal_id, count(*), sum(v.amount_fen)::bigint FROM"
        f" (SELECT terminal_id, amount_fen FROM ({ONLINE_SQL}) a UNION ALL"
        f"  SELECT terminal_id, amount_fen FROM ({OFFLINE_SQL}) b) v"
        " WHERE v.amount_fen <> 0 AND NOT EXISTS (SELECT 1 FROM terminal_counterparty tc"
        " WHERE tc.terminal_id = v.terminal_id) GROUP BY 1 ORDER BY 1", start_ms, end_ms)
    return [(r[0], r[1], r[2]) for r in rows]


async def file_rows(conn: asyncpg.Connection, start_ms: int, end_ms: int,
                    utc_offset_ms: int) -> tuple[dict[str, list[Row]], dict[str, list[Row]]]:
    """(online, offline) settlement-file rows of visitors' rides, per counterparty."""
    online: dict[str, list[Row]] = {}
    offline: dict[str, list[Row]] = {}
    for r in await conn.fetch(
            f"SELECT tc.counterparty_id, v.* FROM ({ONLINE_SQL}) v"
            " JOIN terminal_counterparty tc ON tc.terminal_id = v.terminal_id ORDER BY 1, v.terminal_id, v.seq",
            start_ms, end_ms):
        online.setdefault(r[0], []).append(Row(r["card_no"], f"online:{r['terminal_id']}:{r['seq']}", r["amount_fen"],
                                               r["kind"], r["route"], r["terminal_id"],
                                               when_digits(r["tap_time_ms"], utc_offset_ms)))
    for r in await conn.fetch(
            f"SELECT tc.counterparty_id, v.* FROM ({OFFLINE_SQL}) v"
            " JOIN terminal_counterparty tc ON tc.terminal_id = v.terminal_id ORDER BY 1, v.card_no, v.offline_counter",
            start_ms, end_ms):
        offline.setdefault(r[0], []).append(Row(r["card_no"], f"offline:{r['offline_counter']}", r["amount_fen"],
                                                r["kind"], r["route"], r["terminal_id"], r["tx_when"]))
    return online, offline
