"""Regional clearing's records, codes and reports, pure (issue 15, item 3; docs/clearing.md).

A ``ClearingRecord`` is one cross-city tap: a card of ``issuer`` used in ``acquirer``. Its key
is the acquirer's terminal and the terminal's seq (``"B:1001:57"``), which no two taps share.
The clearing house (clearing.py) keeps no record objects on its hot path; this type is the
readable form that senders build files from and issuers check TACs on.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .epurse_crypto import When
from .netting import BASIS_POINTS, Obligation, bilateral, interchange_fen, multilateral, over_cap
from .offline import CARD_NO_DIGITS, OfflineRecord

MAX_AMOUNT_FEN = 2**31 - 1  # as the wire's AmountFen (protocols/messages.py)
MAX_CARD_NO = 10**CARD_NO_DIGITS - 1
MAX_TERMINAL_ID = 2**48 - 1  # the TAC covers 6 bytes of terminal id
MAX_TERMINAL_SEQ = 2**32 - 1
MAX_OFFLINE_COUNTER = 2**16 - 1
MAX_REASON_CHARS = 200
MAX_PREFIXES = 64
TAC_BYTES = 4
KINDS = ("online", "offline")
CITY_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")  # no ':' or ',': a city code is part of a record id
WHEN_DIGITS = 14  # YYYYMMDDhhmmss, local to the acquirer


class ClearingCode(IntEnum):
    OK = 0
    DUPLICATE_FILE = 1  # this sender already delivered this window
    BAD_MANIFEST = 2  # check_delivery or the file format refused it; the reason says why
    BAD_SIGNATURE = 3
    UNKNOWN_SENDER = 4
    WINDOW_CLOSED = 5
    WRONG_WINDOW = 6  # the manifest's or a row's window is not the delivery's; a tap after its window
    UNKNOWN_ISSUER = 7  # no such participant, or the card is outside the issuer's prefixes
    DUPLICATE_RECORD = 8  # cleared before, in any retained window, or twice in one delivery
    WINDOW_TOO_OLD = 9  # at or before the horizon: its record ids are no longer kept
    HORIZON_FULL = 10  # opening the window would drop the oldest retained one, still open
    WINDOW_FULL = 11  # the window would hold more than max_records_per_window
    HOME_TAP = 12  # issuer == acquirer: settled inside the city, not here
    UNKNOWN_RECORD = 13  # a verdict on a record id not cleared in a retained window
    NOT_ISSUER = 14  # a verdict by someone other than the record's issuer
    DUPLICATE_CHARGEBACK = 15
    WINDOW_OPEN = 16  # settled() on a window not closed yet
    UNKNOWN_WINDOW = 17


def check_city(city: str) -> str:
    if not isinstance(city, str) or not CITY_RE.fullmatch(city):
        raise ValueError(f"a city code is 1..16 of [A-Za-z0-9_-], got {city!r}")
    return city


def window_key(window: str) -> str:
    """``"2026-12-07"`` -> ``"20261207"``, the form a tap's ``when`` starts with; ValueError if
    ``window`` is not a calendar date written YYYY-MM-DD (one window per day)."""
    if not isinstance(window, str) or len(window) != 10:
        raise ValueError(f"a window is a date YYYY-MM-DD, got {window!r}")
    try:
        date.fromisoformat(window)
    except ValueError:
        raise ValueError(f"a window is a date YYYY-MM-DD, got {window!r}") from None
    return window.replace("-", "")


def record_id_of(acquirer: str, terminal_id: int, terminal_seq: int) -> str:
    return f"{acquirer}:{terminal_id}:{terminal_seq}"


def _bounded(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be {low}..{high}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ClearingRecord:
    """One cross-city tap as the acquirer clears it. Offline taps carry what the issuer's
    ``tac_ok`` needs (``offline_record()``); online taps leave those fields 0 / empty."""

    record_id: str
    issuer: str
    acquirer: str
    card_no: int
    amount_fen: int
    kind: str  # "online" | "offline"
    window: str  # YYYY-MM-DD
    terminal_id: int
    terminal_seq: int
    when: str  # YYYYMMDDhhmmss
    offline_counter: int = 0
    balance_after_fen: int = 0
    transaction_type: int = 0
    tac: bytes = field(default=b"")

    def __post_init__(self) -> None:
        check_city(self.issuer)
        check_city(self.acquirer)
        _bounded("card_no", self.card_no, 1, MAX_CARD_NO)
        _bounded("amount_fen", self.amount_fen, 1, MAX_AMOUNT_FEN)
        _bounded("terminal_id", self.terminal_id, 1, MAX_TERMINAL_ID)
        _bounded("terminal_seq", self.terminal_seq, 0, MAX_TERMINAL_SEQ)
        if self.record_id != record_id_of(self.acquirer, self.terminal_id, self.terminal_seq):
            raise ValueError(f"record_id must be acquirer:terminal_id:terminal_seq, got {self.record_id!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        key = window_key(self.window)
        if len(self.when) != WHEN_DIGITS or not self.when.isdigit() or self.when[:8] > key:
            raise ValueError(f"when must be {WHEN_DIGITS} digits YYYYMMDDhhmmss, not after window {self.window},"
                             f" got {self.when!r}")
        if self.kind == "offline":
            _bounded("offline_counter", self.offline_counter, 0, MAX_OFFLINE_COUNTER)
            _bounded("balance_after_fen", self.balance_after_fen, 0, MAX_AMOUNT_FEN)
            _bounded("transaction_type", self.transaction_type, 0, 255)
            if len(self.tac) != TAC_BYTES:
                raise ValueError(f"an offline record's tac is {TAC_BYTES} bytes, got {len(self.tac)}")
        elif (self.offline_counter, self.balance_after_fen, self.transaction_type, self.tac) != (0, 0, 0, b""):
            raise ValueError("an online record carries no offline counter, balance, transaction type or tac")

    def offline_record(self) -> OfflineRecord:
        """What the issuer's ``tac_ok(dtk, ...)`` checks (kind and route are not under the TAC)."""
        if self.kind != "offline":
            raise ValueError(f"{self.record_id} is an online record: it has no TAC")
        return OfflineRecord(self.card_no, self.offline_counter, self.amount_fen, self.balance_after_fen,
                             self.transaction_type, self.terminal_id, self.terminal_seq,
                             When.of(self.when[:8], self.when[8:]), self.tac)


@dataclass(frozen=True, slots=True)
class Rejection:
    record_id: str
    code: ClearingCode
    reason: str


@dataclass(frozen=True, slots=True)
class Ingested:
    code: ClearingCode
    reason: str
    accepted: int = 0
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    code: ClearingCode
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Statement:
    """One city's figures for one window, to compare with its own books. As acquirer it is owed
    ``receivable_gross_fen`` less ``acquirer_fees_fen``; as issuer it owes ``payable_gross_fen``
    less ``issuer_fees_fen``; chargebacks return the net of a rejected record to its issuer.
    ``net_fen`` is its multilateral position (positive receives); all cities' sum to 0."""

    city: str
    window: str
    receivable_gross_fen: int = 0
    receivable_records: int = 0
    acquirer_fees_fen: int = 0
    payable_gross_fen: int = 0
    payable_records: int = 0
    issuer_fees_fen: int = 0
    chargebacks_received_fen: int = 0  # as issuer
    chargebacks_paid_fen: int = 0  # as acquirer
    net_fen: int = 0


@dataclass(frozen=True, slots=True)
class SettlementReport:
    """A closed window: the obligations net of fees (a chargeback is the acquirer owing its
    issuer, so its ``Obligation.issuer`` is the payer), the netting, and who is over its cap."""

    window: str
    records: int
    chargebacks: int
    obligations: tuple[Obligation, ...]
    bilateral: dict[tuple[str, str], int]
    multilateral: dict[str, int]
    statements: dict[str, Statement]
    suspended: frozenset[str]
    charged_back: tuple["Chargeback", ...] = ()  # each with the issuer's reason


@dataclass(frozen=True, slots=True)
class Closed:
    code: ClearingCode
    reason: str
    report: SettlementReport | None = None


@dataclass(frozen=True, slots=True)
class Participant:
    city: str
    public_key: Ed25519PublicKey
    net_debit_cap_fen: int
    rate_bp: int  # the interchange it charges as issuer
    card_prefixes: tuple[str, ...]  # its cards' numbers start with one of these; () = any
    index: int

    def __post_init__(self) -> None:
        check_city(self.city)
        _bounded("net_debit_cap_fen", self.net_debit_cap_fen, 0, 2**62)
        _bounded("rate_bp", self.rate_bp, 0, BASIS_POINTS)
        if len(self.card_prefixes) > MAX_PREFIXES or not all(
                p.isascii() and p.isdigit() and len(p) <= 19 for p in self.card_prefixes):
            raise ValueError(f"card_prefixes: at most {MAX_PREFIXES}, each 1..19 digits")


@dataclass(slots=True)
class HeldWindow:
    """A window the clearing house holds (clearing.py's state, not a message)."""

    name: str
    key: str  # YYYYMMDD
    serial: int
    sales: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # -> [gross fen, records]
    deliveries: dict[str, str] = field(default_factory=dict)  # sender -> the manifest's SHA-256
    record_ids: list[str] = field(default_factory=list)
    report: SettlementReport | None = None


@dataclass(frozen=True, slots=True)
class Chargeback:
    """An issuer's rejection of a cleared record: the acquirer owes back what it was paid for it."""

    record_id: str
    issuer: str
    acquirer: str
    amount_fen: int
    record_window_key: str
    reason: str


def settle(window: str, participants: list[str], rate_bp: dict[str, int], caps: dict[str, int],
           sales: dict[tuple[str, str], list[int]], chargebacks: Iterable[Chargeback]) -> SettlementReport:
    """A window's figures. The issuer's ``rate_bp`` applies, on each (issuer, acquirer) pair's
    gross, rounded down once per pair: the issuer keeps the fee, the acquirer bears it. A pair's
    chargebacks return their gross less the issuer's fee on it, also per pair, rounded down."""
    for r in rate_bp.values():
        if not 0 <= r <= BASIS_POINTS:
            raise ValueError(f"interchange rate must be 0..{BASIS_POINTS} basis points, got {r}")
    charged_back = tuple(chargebacks)
    back: dict[tuple[str, str], list[int]] = {}
    for c in charged_back:
        pair = back.setdefault((c.issuer, c.acquirer), [0, 0])
        pair[0] += c.amount_fen
        pair[1] += 1
    figures = {p: dict.fromkeys(Statement.__slots__[2:], 0) for p in participants}
    obligations = []
    for (iss, acq), (gross, n) in sorted(sales.items()):
        fee = interchange_fen(gross, rate_bp[iss])
        obligations.append(Obligation(iss, acq, gross - fee, n))
        figures[acq]["receivable_gross_fen"] += gross
        figures[acq]["receivable_records"] += n
        figures[acq]["acquirer_fees_fen"] += fee
        figures[iss]["payable_gross_fen"] += gross
        figures[iss]["payable_records"] += n
        figures[iss]["issuer_fees_fen"] += fee
    for (iss, acq), (gross, n) in sorted(back.items()):
        returned = gross - interchange_fen(gross, rate_bp[iss])
        obligations.append(Obligation(acq, iss, returned, n))
        figures[iss]["chargebacks_received_fen"] += returned
        figures[acq]["chargebacks_paid_fen"] += returned
    positions = multilateral(obligations, participants)
    statements = {}
    for p, f in figures.items():
        f["net_fen"] = (f["receivable_gross_fen"] - f["acquirer_fees_fen"] - f["payable_gross_fen"]
                        + f["issuer_fees_fen"] + f["chargebacks_received_fen"] - f["chargebacks_paid_fen"])
        if f["net_fen"] != positions[p]:  # two ways of the same sum: a bug if they differ
            raise AssertionError(f"{p}: statement {f['net_fen']} != position {positions[p]}")
        statements[p] = Statement(p, window, **f)
    if sum(positions.values()) != 0:
        raise AssertionError(f"window {window}: positions sum to {sum(positions.values())}")
    return SettlementReport(window, sum(n for _, n in sales.values()), sum(n for _, n in back.values()),
                            tuple(obligations), bilateral(obligations), positions, statements,
                            frozenset(over_cap(positions, caps)), charged_back)
