"""A city's clearing delivery for one window (issue 15 item 3, the acquirer's side): the
cross-city records it took, one clearing CSV per issuer (protocols/clearing_files.py), a
manifest with each file's count, sum and SHA-256, signed with the city's key
(settlement_export.load_or_make_key), written to a directory and/or posted to the house.

Which records: the offline purse sales of other issuers' cards (``cards.issuer_of`` not the
city's own) *received* in the window's local day: those the host kept for their issuers
(offline_visitor_records, migration 0010: FORWARDED, TAC unchecked here) and any its desk
journaled as money (offline_records, ACCEPTED or BALANCE_IMPOSSIBLE; a key in both is sent
once); and the visitors'
online taps their issuers decided over the link (``remote_tap_records``). A record is an
obligation of its issuer only if it has money (amount > 0).

A record belongs to the window of ``max(day received, day tapped)``: the host's clock books it
(as settlement does), unless the terminal's clock dates it after that day; the house refuses a
tap dated after its window, so such a record is held back from the window it arrived in (and
listed in ``held_back``) and goes out, exactly once, with the window of its own date
(``LATE_FROM``: received before that window, dated inside it). Each record maps to one
window, so nothing is sent twice or lost; the same window always gives the same bytes.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..domain.cards import issuer_of
from ..domain.clearing_records import ClearingRecord, check_city, record_id_of, window_key
from ..domain.results import Result
from ..domain.settlement import MS_PER_DAY, when_digits
from ..protocols.clearing_files import render_csv, tally
from ..protocols.settlement_files import manifest, sign
from .settlement import JOURNALED_CODES
from .settlement_export import MANIFEST, SIGNATURE, _write
from .settlement_visitors import RECEIVED_WHERE

_ISSUER_DIV = 10**11  # cards.issuer_of: the serial and check digit are the last 11 digits
# held back from the window it was received in (dated later): sent with the window of its date
_HELD_OFFLINE = "(o.received_at < to_timestamp($1 / 1000.0) AND o.tx_when / 1000000 = $6::bigint)"
_COLUMNS = ("o.card_no, o.offline_counter, o.amount_fen, o.balance_after_fen, o.tx_type, o.terminal_id,"
            " o.terminal_seq, o.tx_when, o.tac")


@dataclass(frozen=True, slots=True)
class ClearingDelivery:
    sender: str
    window: str
    files: dict[str, bytes]  # "<issuer>.csv" -> clearing CSV
    manifest: bytes
    signature: bytes
    records: int
    sum_fen: int
    held_back: list[str] = field(default_factory=list)  # why each left-out record was left out


def issuer_code(prefix: int, codes: Mapping[int, str]) -> str:
    """The issuer's city code at the house: from ``codes`` (the registry), else its number."""
    return check_city(codes.get(prefix, str(prefix)))


async def offline_records(conn: asyncpg.Connection, sender: str, window: str, start_ms: int, end_ms: int,
                          own_issuer: int, codes: Mapping[int, str]) -> tuple[list[ClearingRecord], list[str]]:
    """Other issuers' cards' offline sales received in [start_ms, end_ms), by terminal and seq:
    those kept for their issuers and those journaled (a (card, counter) in both: once)."""
    key = window_key(window)
    out, held = [], []
    for r in await conn.fetch(
            f"SELECT {_COLUMNS} FROM offline_records o"
            f" WHERE ({RECEIVED_WHERE} OR {_HELD_OFFLINE}) AND o.code = ANY($3::smallint[]) AND o.amount_fen > 0"
            " AND o.card_no / $4::bigint <> $5::bigint"
            " UNION ALL"
            f" SELECT {_COLUMNS} FROM offline_visitor_records o"
            f" WHERE ({RECEIVED_WHERE} OR {_HELD_OFFLINE}) AND o.amount_fen > 0 AND o.card_no / $4::bigint <> $5::bigint"
            " AND NOT EXISTS (SELECT 1 FROM offline_records j"
            "  WHERE j.card_no = o.card_no AND j.offline_counter = o.offline_counter)"
            " ORDER BY terminal_id, terminal_seq, card_no",
            start_ms, end_ms, JOURNALED_CODES, _ISSUER_DIV, own_issuer, int(key)):
        when = f"{r['tx_when']:014d}"
        rid = record_id_of(sender, r["terminal_id"], r["terminal_seq"])
        if when[:8] > key:
            held.append(f"{rid}: tapped {when[:8]}, after window {window} (the validator's clock)")
            continue
        try:
            out.append(ClearingRecord(rid, issuer_code(issuer_of(r["card_no"]), codes), sender, r["card_no"],
                                      r["amount_fen"], "offline", window, r["terminal_id"], r["terminal_seq"], when,
                                      r["offline_counter"], r["balance_after_fen"], r["tx_type"], bytes(r["tac"])))
        except ValueError as exc:  # out of the clearing format's bounds: kept for a person to look at
            held.append(f"{rid}: {exc}")
    return out, held


async def remote_tap_records(conn: asyncpg.Connection, sender: str, window: str, start_ms: int, end_ms: int,
                             utc_offset_ms: int) -> tuple[list[ClearingRecord], list[str]]:
    """Visitors' online taps (migration 0009, docs/interop.md 5.6) that their issuers owe this
    city for: the taps an issuer decided OK with a fare (``remote_taps``, by when this city
    committed the answer) and the stand-in approvals an issuer confirmed afterwards
    (``standin_taps``, by when the confirmation was committed; a key answered online too is
    cleared once). Pending or declined stand-ins are this city's risk, not cleared. A tap the
    terminal's clock dated after the day it was answered goes with the window of its date."""
    key = window_key(window)
    out, held = [], []
    rows = await conn.fetch(
        "SELECT r.issuer, r.terminal_id, r.seq, r.card_no, r.fare_fen AS amount_fen, r.tap_time_ms FROM remote_taps r"
        " WHERE r.result = $3 AND r.fare_fen > 0 AND ((r.answered_ms >= $1 AND r.answered_ms < $2)"
        "  OR (r.answered_ms < $1 AND (r.tap_time_ms + $4) / $5 = ($1 + $4) / $5))"
        " UNION ALL"
        " SELECT s.issuer, s.terminal_id, s.seq, s.card_no, s.amount_fen, s.tap_time_ms FROM standin_taps s"
        " WHERE s.state = 'confirmed' AND s.amount_fen > 0 AND ((s.decided_ms >= $1 AND s.decided_ms < $2)"
        "  OR (s.decided_ms < $1 AND (s.tap_time_ms + $4) / $5 = ($1 + $4) / $5))"
        " AND NOT EXISTS (SELECT 1 FROM remote_taps r WHERE r.terminal_id = s.terminal_id AND r.seq = s.seq"
        " AND r.result = $3 AND r.fare_fen > 0)"
        " ORDER BY 2, 3", start_ms, end_ms, int(Result.OK), utc_offset_ms, MS_PER_DAY)
    for r in rows:
        rid = record_id_of(sender, r["terminal_id"], r["seq"])
        when = f"{when_digits(r['tap_time_ms'], utc_offset_ms):014d}"
        if when[:8] > key:
            held.append(f"{rid}: tapped {when[:8]}, after window {window}")
            continue
        try:
            out.append(ClearingRecord(rid, r["issuer"], sender, r["card_no"], r["amount_fen"], "online", window,
                                      r["terminal_id"], r["seq"], when))
        except ValueError as exc:
            held.append(f"{rid}: {exc}")
    return out, held


def build(sender: str, window: str, records: list[ClearingRecord], key: Ed25519PrivateKey,
          held_back: list[str] | None = None) -> ClearingDelivery:
    """One file per issuer (sorted by record id's terminal and seq as given), the manifest,
    its signature. No records: an empty manifest, which still says "nothing from me"."""
    check_city(sender)
    window_key(window)
    by_issuer: dict[str, list[ClearingRecord]] = {}
    for r in records:
        if r.acquirer != sender or r.window != window:
            raise ValueError(f"{r.record_id}: acquirer {r.acquirer}, window {r.window}: not {sender}'s {window}")
        by_issuer.setdefault(r.issuer, []).append(r)
    files = {f"{iss}.csv": render_csv(rs) for iss, rs in sorted(by_issuer.items())}
    body = manifest(sender, window, files, tally)
    return ClearingDelivery(sender, window, files, body, sign(key, body), len(records),
                            sum(r.amount_fen for r in records), list(held_back or []))


async def gather(conn: asyncpg.Connection, sender: str, window: str, start_ms: int, end_ms: int, own_issuer: int,
                 key: Ed25519PrivateKey, codes: Mapping[int, str] | None = None,
                 utc_offset_ms: int = 0) -> ClearingDelivery:
    """Online then offline records; a record id taken already (a terminal whose online seq and
    offline transaction seq met) is held back, not sent for the house to reject."""
    online, held_on = await remote_tap_records(conn, sender, window, start_ms, end_ms, utc_offset_ms)
    offline, held_off = await offline_records(conn, sender, window, start_ms, end_ms, own_issuer, codes or {})
    seen: set[str] = set()
    records, held = [], held_on + held_off
    for r in online + offline:
        if r.record_id in seen:
            held.append(f"{r.record_id}: the id of another record of this window ({r.kind} held back)")
            continue
        seen.add(r.record_id)
        records.append(r)
    return build(sender, window, records, key, held)


def write(out_dir: Path, d: ClearingDelivery) -> Path:
    """``<out_dir>/<window>/<issuer>.csv``, ``manifest.json``, ``manifest.sig`` (the signature
    last: its presence says the files before it are complete)."""
    where = out_dir / d.window
    where.mkdir(parents=True, exist_ok=True)
    for name, data in d.files.items():
        _write(where / name, data)
    _write(where / MANIFEST, d.manifest)
    _write(where / SIGNATURE, d.signature)
    return where
