"""The terminal's side of the city-pass card's purse commands, pure: the command APDUs a
validator (purchase, compound purchase) or a load host sends, and the INITIALIZE answers
parsed. The card's side is epurse_card.py; the layouts are in docs/card.md."""

from dataclasses import dataclass

from ..domain.epurse_crypto import COMPOUND_PURCHASE, LOAD_EP, PURCHASE_EP, When
from .apdu import Command
from .card_files import SFI_CAPP, TRANSIT_RECORD, TransitRecord

CLA_PBOC = 0x80
KEY_INDEX = 0x01
P2_EP = 0x02
PROOF_TYPES = frozenset({PURCHASE_EP, COMPOUND_PURCHASE, LOAD_EP})


def _init(p1: int, amount_fen: int, terminal_id: bytes, le: int) -> Command:
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or not 0 <= amount_fen < 2**32:
        raise ValueError(f"amount_fen must be 0..2^32-1, got {amount_fen!r}")
    if not isinstance(terminal_id, bytes | bytearray) or len(terminal_id) != 6:
        raise ValueError("terminal id must be 6 bytes")
    data = bytes([KEY_INDEX]) + amount_fen.to_bytes(4, "big") + bytes(terminal_id)
    return Command(CLA_PBOC, 0x50, p1, P2_EP, data, le=le)


def initialize_purchase(amount_fen: int, terminal_id: bytes, *, compound: bool = False) -> Command:
    """INITIALIZE FOR PURCHASE (P1 01), or FOR CAPP PURCHASE (P1 03) with ``compound``."""
    return _init(0x03 if compound else 0x01, amount_fen, terminal_id, 15)


def initialize_load(amount_fen: int, terminal_id: bytes) -> Command:
    return _init(0x00, amount_fen, terminal_id, 16)


def update_capp_cache(record: TransitRecord) -> Command:
    """UPDATE CAPP DATA CACHE: the new transit record (EF 0x17 record 1), written with the debit."""
    return Command(CLA_PBOC, 0xDC, TRANSIT_RECORD, SFI_CAPP << 3, record.encode())


def debit(terminal_seq: int, when: When, mac1: bytes) -> Command:
    """DEBIT FOR PURCHASE, or FOR CAPP PURCHASE after a compound INITIALIZE: same bytes."""
    if not 0 <= terminal_seq < 2**32 or len(mac1) != 4:
        raise ValueError("terminal seq must be 0..2^32-1 and MAC1 4 bytes")
    return Command(CLA_PBOC, 0x54, 0x01, 0x00, terminal_seq.to_bytes(4, "big") + when.bcd() + bytes(mac1), le=8)


def credit_load(when: When, mac2: bytes) -> Command:
    if len(mac2) != 4:
        raise ValueError("MAC2 must be 4 bytes")
    return Command(CLA_PBOC, 0x52, 0x00, 0x00, when.bcd() + bytes(mac2), le=4)


def transaction_proof(transaction_type: int, counter: int) -> Command:
    """GET TRANSACTION PROOF of the purchase (06), compound purchase (09) or load (02) made
    with ``counter`` (the offline or the online counter before it)."""
    if transaction_type not in PROOF_TYPES or not 0 <= counter <= 0xFFFF:
        raise ValueError(f"proof of type {transaction_type!r} counter {counter!r}: type 02, 06 or 09, counter 2 bytes")
    return Command(CLA_PBOC, 0x5A, 0x00, transaction_type, counter.to_bytes(2, "big"),
                   le=4 if transaction_type == LOAD_EP else 8)


@dataclass(frozen=True, slots=True)
class PurchaseInit:
    """INITIALIZE FOR (CAPP) PURCHASE's answer (15 bytes)."""

    balance_fen: int
    offline_counter: int
    overdraft_fen: int
    key_version: int
    algorithm: int
    card_random: bytes

    @classmethod
    def parse(cls, data: bytes) -> "PurchaseInit":
        if len(data) != 15:
            raise ValueError(f"INITIALIZE FOR PURCHASE answers 15 bytes, got {len(data)}")
        return cls(int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:6], "big"),
                   int.from_bytes(data[6:9], "big"), data[9], data[10], bytes(data[11:15]))


@dataclass(frozen=True, slots=True)
class LoadInit:
    """INITIALIZE FOR LOAD's answer (16 bytes)."""

    balance_fen: int
    online_counter: int
    key_version: int
    algorithm: int
    card_random: bytes
    mac1: bytes

    @classmethod
    def parse(cls, data: bytes) -> "LoadInit":
        if len(data) != 16:
            raise ValueError(f"INITIALIZE FOR LOAD answers 16 bytes, got {len(data)}")
        return cls(int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:6], "big"), data[6], data[7],
                   bytes(data[8:12]), bytes(data[12:16]))
