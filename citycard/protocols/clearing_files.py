"""Clearing files, pure (issue 15, item 3): the CSV an acquirer city sends the clearing house,
one row per cross-city tap, under the signed manifest of settlement_files.

settlement_files.Row does not fit: a clearing row names its issuer and carries the offline
TAC's fields. Bytes are canonical as there: fixed columns, ``\\n`` line ends, UTF-8; an online
row leaves the offline columns empty. ``parse_columns`` is the clearing house's fast path: it
checks every row's format and returns columns, not objects; a row that does not check refuses
the whole file (FileRefused, or WindowRefused for a row of another window).
"""

import csv
import functools
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..domain.clearing_records import (
    MAX_AMOUNT_FEN,
    MAX_CARD_NO,
    MAX_OFFLINE_COUNTER,
    MAX_TERMINAL_ID,
    MAX_TERMINAL_SEQ,
    TAC_BYTES,
    WHEN_DIGITS,
    ClearingRecord,
)
from .settlement_files import FileRefused

COLUMNS = ("record_id", "issuer", "acquirer", "card_no", "amount_fen", "kind", "window", "terminal_id",
           "terminal_seq", "when", "offline_counter", "balance_after_fen", "transaction_type", "tac")
MAX_ROWS_PER_FILE = 10_000_000
MAX_FILE_BYTES = 2**31  # ~10 M rows of ~130 bytes, and then some
_HEADER = ",".join(COLUMNS)
_CARD_DIGITS = len(str(MAX_CARD_NO))


class WindowRefused(FileRefused):
    """A row of a window other than the delivery's."""


def to_row(r: ClearingRecord) -> tuple[str, ...]:
    off = r.kind == "offline"
    return (r.record_id, r.issuer, r.acquirer, str(r.card_no), str(r.amount_fen), r.kind, r.window,
            str(r.terminal_id), str(r.terminal_seq), r.when, str(r.offline_counter) if off else "",
            str(r.balance_after_fen) if off else "", str(r.transaction_type) if off else "",
            r.tac.hex() if off else "")


def from_row(f: Sequence[str]) -> ClearingRecord:
    """The record of one row (ValueError if it does not check)."""
    if len(f) != len(COLUMNS):
        raise ValueError(f"{len(f)} fields, expected {len(COLUMNS)}")
    off = f[5] == "offline"
    return ClearingRecord(f[0], f[1], f[2], int(f[3]), int(f[4]), f[5], f[6], int(f[7]), int(f[8]), f[9],
                          int(f[10]) if off else 0, int(f[11]) if off else 0, int(f[12]) if off else 0,
                          bytes.fromhex(f[13]) if off else b"")


def render_csv(records: Sequence[ClearingRecord]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(to_row(r) for r in records)
    return out.getvalue().encode()


def _text(data: bytes, name: str) -> str:
    """The rows' text, after a checked header."""
    if len(data) > MAX_FILE_BYTES:
        raise FileRefused(f"{name}: {len(data)} bytes, more than {MAX_FILE_BYTES}")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise FileRefused(f"{name}: not UTF-8 ({exc})") from None
    header, _, rows = text.partition("\n")
    if header != _HEADER:
        raise FileRefused(f"{name}: the header must be {_HEADER}")
    return rows


def _lines(data: bytes, name: str) -> Iterator[list[str]]:
    return csv.reader(io.StringIO(_text(data, name)))


def parse_csv(data: bytes, name: str) -> list[ClearingRecord]:
    """Every row as a record: the readable, slow path (an issuer checking TACs, tests)."""
    out = []
    n = 1
    try:
        for f in _lines(data, name):
            n += 1
            out.append(from_row(f))
    except (ValueError, csv.Error) as exc:
        if isinstance(exc, FileRefused):
            raise
        raise FileRefused(f"{name} line {n}: {exc}") from None
    return out


@dataclass(frozen=True, slots=True)
class Columns:
    """A checked file, by column: row i is (record_ids[i], issuers[i], ...)."""

    record_ids: list[str]
    issuers: list[str]
    cards: list[str]  # digits, for the issuers' card-prefix check
    amounts: list[int]
    whens: list[str]
    sum_fen: int


_CITY = "[A-Za-z0-9_-]{1,16}"
_WINDOW = "[0-9]{4}-[0-9]{2}-[0-9]{2}"


def _upto(high: int, low: int = 0) -> str:
    """A regular expression for the integers ``low``..``high`` (low 0 or 1), written without
    leading zeros: the shorter ones, then digit by digit below ``high``'s, then ``high``."""
    d = str(high)
    alts = (["0"] if low == 0 else []) + ([f"[1-9][0-9]{{0,{len(d) - 2}}}"] if len(d) > 1 else [])
    for i, ch in enumerate(d):
        first = 1 if i == 0 else 0
        if int(ch) > first:
            alts.append(f"{d[:i]}[{first}-{int(ch) - 1}][0-9]{{{len(d) - i - 1}}}")
    return "(?:" + "|".join([*alts, d]) + ")"


@functools.lru_cache(maxsize=64)
def _rows_re(acquirer: str | None, window: str | None) -> "re.Pattern[str]":
    """Every canonical row, each column's form and bounds at once, each line ended by \\n. The
    groups are only for the back-references (the record id's acquirer, terminal and seq are the
    columns')."""
    acq = _CITY if acquirer is None else re.escape(acquirer)
    win = _WINDOW if window is None else re.escape(window)
    tail = rf"{win},\2,\3,[0-9]{{{WHEN_DIGITS}}}"
    offline = f"{_upto(MAX_OFFLINE_COUNTER)},{_upto(MAX_AMOUNT_FEN)},{_upto(255)},[0-9a-f]{{{2 * TAC_BYTES}}}"
    row = (rf"({acq}):({_upto(MAX_TERMINAL_ID, 1)}):({_upto(MAX_TERMINAL_SEQ)}),{_CITY},\1,"
           rf"{_upto(MAX_CARD_NO, 1)},{_upto(MAX_AMOUNT_FEN, 1)},(?:online,{tail},,,,|offline,{tail},{offline})")
    return re.compile(rf"(?:{row}\n)*", re.ASCII)


def parse_columns(data: bytes, name: str, acquirer: str | None = None, window: str | None = None) -> Columns:
    """Check each row's format and bounds; ``acquirer`` and ``window``, when given, must be every
    row's. The clearing house's fast path, no object per row: one regular expression checks the
    whole file and every bound (rows must be canonical, as render_csv writes them), one split
    cuts it into columns. When anything is off, ``_explain`` finds the first bad line and its
    reason."""
    text = _text(data, name)
    if text.count("\n") > MAX_ROWS_PER_FILE:
        raise FileRefused(f"{name}: more than {MAX_ROWS_PER_FILE} rows")
    if _rows_re(acquirer, window).fullmatch(text):
        n = len(COLUMNS)
        flat = text.replace("\n", ",").split(",")
        flat.pop()  # the "" after the last line end
        amounts = list(map(int, flat[4::n]))
        return Columns(flat[0::n], flat[1::n], flat[3::n], amounts, flat[9::n], sum(amounts))
    _explain(data, name, acquirer, window)
    raise FileRefused(f"{name}: a row is not canonical (quoted fields, upper-case hex, leading zeros, a city"
                      " code out of [A-Za-z0-9_-]{1,16}, a line end other than \\n)")


def _explain(data: bytes, name: str, acquirer: str | None, window: str | None) -> None:
    """The slow path: raises FileRefused with the first bad row's line and reason, if found."""
    rids: list[str] = []
    issuers: list[str] = []
    cards: list[str] = []
    amounts: list[int] = []
    whens: list[str] = []
    n = 1
    try:
        for f in _lines(data, name):
            n += 1
            rid, iss, acq, card, amount, kind, win, tid, tseq, when, ctr, bal, ttype, tac = f
            a = int(amount)
            if not 0 < a <= MAX_AMOUNT_FEN:
                raise ValueError(f"amount_fen must be 1..{MAX_AMOUNT_FEN}")
            if not (card.isdigit() and card[0] != "0" and len(card) <= _CARD_DIGITS):
                raise ValueError(f"card_no must be 1..{MAX_CARD_NO}")
            if acquirer is not None and acq != acquirer:
                raise ValueError(f"acquirer {acq!r}: a sender clears only its own taps ({acquirer})")
            if window is not None and win != window:
                raise WindowRefused(f"{name} line {n}: window {win!r}, the delivery's is {window}")
            if not (tid.isdigit() and tseq.isdigit() and 0 < int(tid) <= MAX_TERMINAL_ID
                    and int(tseq) <= MAX_TERMINAL_SEQ and rid == f"{acq}:{tid}:{tseq}"):
                raise ValueError("record_id must be acquirer:terminal_id:terminal_seq, in bounds")
            if len(when) != WHEN_DIGITS or not when.isdigit():
                raise ValueError(f"when must be {WHEN_DIGITS} digits")
            if kind == "offline":
                if not (ctr.isdigit() and int(ctr) <= MAX_OFFLINE_COUNTER and bal.isdigit()
                        and int(bal) <= MAX_AMOUNT_FEN and ttype.isdigit() and int(ttype) <= 255
                        and len(bytes.fromhex(tac)) == TAC_BYTES):
                    raise ValueError("offline_counter, balance_after_fen, transaction_type or tac out of bounds")
            elif kind != "online" or ctr or bal or ttype or tac:
                raise ValueError("kind must be online (offline columns empty) or offline")
            rids.append(rid)
            issuers.append(iss)
            cards.append(card)
            amounts.append(a)
            whens.append(when)
            if n > MAX_ROWS_PER_FILE:
                raise ValueError(f"more than {MAX_ROWS_PER_FILE} rows")
    except FileRefused:
        raise
    except (ValueError, csv.Error) as exc:  # a short or long row fails the unpacking: ValueError
        raise FileRefused(f"{name} line {n}: {exc}") from None


def tally(data: bytes, name: str) -> tuple[int, int]:
    """(records, sum in fen) of a clearing file, for settlement_files.manifest/check_delivery."""
    cols = parse_columns(data, name)
    return len(cols.amounts), cols.sum_fen
