"""A tap as the shard sees it, and the row it leaves in the journal."""

from enum import IntEnum

import msgspec

MAX_SEQ = (1 << 32) - 1  # terminal seq is a uint32 that never wraps within a terminal's life
MAX_TERMINAL_ID = (1 << 31) - 1
MAX_CARD_NO = 10**18 - 1


class TapKind(IntEnum):
    BUS = 1
    BIKE_RENT = 2
    BIKE_RETURN = 3
    TAXI = 4
    PARKING_ENTRY = 5
    PARKING_EXIT = 6
    WATER_BUS = 7
    MERCHANT = 8
    PETROL = 9
    PARK_ENTRY = 10
    LIBRARY = 11
    MEDICAL = 12


class Tap(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One tap routed to a shard. array_like: it crosses the gateway-to-actor hop packed."""

    terminal_id: int
    seq: int
    card_no: int
    time_ms: int  # terminal's clock, Unix epoch milliseconds
    kind: int
    route: int = 0
    amount_fen: int = 0
    hotlisted: bool = False  # the gateway found the card on its hotlist: refuse, unless a retry
    bill_class: int = 0  # medical bills: BillClass


class BillClass(IntEnum):
    NONE = 0
    OUTPATIENT = 1
    INPATIENT = 2
    PHARMACY = 3


# Outcomes and rows are made per tap: gc=False Structs stay out of the cyclic GC, which
# otherwise walks every card of the shard each time these pile up (measured: half the time).
class Outcome(msgspec.Struct, array_like=True, frozen=True, gc=False):
    result: int
    fare_fen: int  # charged by this tap (0 unless OK)
    balance_fen: int  # purse after the tap (-1 if the card is unknown)
    replay: bool  # True: a retry answered with the first outcome


class JournalRow(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One decided tap, in apply order. Columns of the journal table, in order."""

    lsn: int
    terminal_id: int
    seq: int
    card_no: int
    kind: int
    route: int
    tap_time_ms: int
    applied_ms: int
    result: int
    amount_fen: int  # paid by the holder (sum of purse debits; credits, when they come, < 0)
    balance_after_fen: int  # e-purse after the tap (-1: card unknown)
    request_fen: int = 0  # the amount the terminal sent (bill, POS amount)
    bill_class: int = 0
    fund_fen: int = 0  # paid by the health-insurance fund, not by the holder
    fare_version: int = 0  # fare table version that priced the tap
    concession: int = -1  # index of the ride-limited concession used, else -1
    d_epurse: int = 0  # per-purse deltas in fen (negative = debit); deposit holds move
    d_general: int = 0  # money from a purse into d_deposit and back
    d_voucher: int = 0
    d_allowance: int = 0
    d_medical: int = 0
    d_deposit: int = 0
    op_key: str | None = None  # card services: the op's idempotency key (taps: None)
    op: bytes | None = None  # card services: the encoded op, for replay


def dedupe_key(terminal_id: int, seq: int) -> int:
    return (terminal_id << 32) | seq
