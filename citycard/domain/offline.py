"""The city-pass's keys and its offline records, pure (docs/card.md, docs/protocol.md).

An offline record is what a validator keeps of one purchase the card made on itself: the
card's own proof (the TAC), and the terminal's transaction seq. The host journals it once by
(card number, the card's offline counter) and checks the TAC with the issuer's keys. The
validator's SAM signs each upload batch with a key only it and the host hold.
"""

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .epurse_crypto import (
    PURCHASE_EP,
    PurchaseInput,
    When,
    diversification_factor,
    diversify,
    purchase_tac,
    same_mac,
)

CARD_NO_DIGITS = 20  # the application serial: the card number, 20 digits packed BCD (10 bytes)
BATCH_MAC_BYTES = 32


def _key(name: str, hex_or_bytes: bytes | str) -> bytes:
    raw = bytes.fromhex(hex_or_bytes) if isinstance(hex_or_bytes, str) else bytes(hex_or_bytes)
    if len(raw) != 16:
        raise ValueError(f"{name} must be 16 bytes (32 hex digits), got {len(raw)}")
    return raw


def card_serial(card_no: int) -> bytes:
    """The application serial number on the card: the card number as 20 BCD digits."""
    if not isinstance(card_no, int) or not 0 < card_no < 10**CARD_NO_DIGITS:
        raise ValueError(f"card number must be 1..{10**CARD_NO_DIGITS - 1}, got {card_no!r}")
    return bytes.fromhex(f"{card_no:0{CARD_NO_DIGITS}d}")


def terminal_id_bytes(terminal_id: int) -> bytes:
    """The 6-byte terminal id the card's MACs and TAC cover: the platform's terminal id,
    big-endian."""
    if not isinstance(terminal_id, int) or not 0 < terminal_id < 2**48:
        raise ValueError(f"terminal id must be 1..2^48-1, got {terminal_id!r}")
    return terminal_id.to_bytes(6, "big")


@dataclass(frozen=True, slots=True)
class CardKeys:
    """One card's keys, diversified from the issuer's master keys by its serial."""

    dpk: bytes  # purchase
    dlk: bytes  # load
    dtk: bytes  # TAC


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """The issuer's master keys (16 bytes each, 3DES). The SAM holds the purchase key; the
    host holds all three. No card holds a master key."""

    mpk: bytes
    mlk: bytes
    mtk: bytes

    @classmethod
    def of_hex(cls, mpk: str, mlk: str, mtk: str) -> "IssuerKeys":
        return cls(_key("purchase master key", mpk), _key("load master key", mlk), _key("TAC master key", mtk))

    def for_card(self, card_no: int) -> CardKeys:
        factor = diversification_factor(card_serial(card_no))
        return CardKeys(diversify(self.mpk, factor), diversify(self.mlk, factor), diversify(self.mtk, factor))

    def dtk(self, card_no: int) -> bytes:
        return diversify(self.mtk, diversification_factor(card_serial(card_no)))


@dataclass(frozen=True, slots=True)
class OfflineRecord:
    """One offline purchase, as the validator stores and uploads it."""

    card_no: int
    offline_counter: int  # the card's counter before this purchase: the record's key
    amount_fen: int
    balance_after_fen: int  # the purse after the debit, as the card reported it
    transaction_type: int  # 06 purchase, 09 compound (transit) purchase
    terminal_id: int
    terminal_seq: int  # the SAM's transaction seq
    when: When  # the validator's local date and time, as the TAC covers them
    tac: bytes  # 4 bytes, by the card
    kind: int = 0  # the tap kind (bus, metro, ...) the fare was for
    route: int = 0

    def purchase_input(self, card_random: bytes = bytes(4)) -> PurchaseInput:
        # The TAC does not cover the card's random; any 4 bytes do for the check.
        return PurchaseInput(self.amount_fen, terminal_id_bytes(self.terminal_id), self.terminal_seq, self.when,
                             card_random, self.offline_counter, self.transaction_type)

    @property
    def key(self) -> tuple[int, int]:
        return self.card_no, self.offline_counter


def expected_tac(dtk: bytes, record: OfflineRecord) -> bytes:
    return purchase_tac(dtk, record.purchase_input())


def tac_ok(dtk: bytes, record: OfflineRecord) -> bool:
    """Whether the card made this record: its TAC checks under the card's TAC key."""
    try:
        return same_mac(expected_tac(dtk, record), record.tac)
    except ValueError:
        return False


# -- upload batches -------------------------------------------------------------------------
def batch_key(master_batch_key: bytes, terminal_id: int) -> bytes:
    """The terminal's batch-signing key (in its SAM): HMAC-SHA256(master, terminal id (6))."""
    return hmac.new(master_batch_key, terminal_id_bytes(terminal_id), hashlib.sha256).digest()


_RECORD = struct.Struct(">QHIIBQI7s4sBI")  # the canonical bytes a batch MAC covers, per record


def record_bytes(r: OfflineRecord) -> bytes:
    return _RECORD.pack(r.card_no, r.offline_counter, r.amount_fen, r.balance_after_fen, r.transaction_type,
                        r.terminal_id, r.terminal_seq, r.when.bcd(), r.tac, r.kind, r.route)


def batch_mac(key: bytes, terminal_id: int, batch_seq: int, records: Sequence[OfflineRecord]) -> bytes:
    """HMAC-SHA256 over terminal id (8), batch seq (8), record count (4) and each record's
    canonical bytes (docs/protocol.md, offline uploads)."""
    h = hmac.new(key, struct.pack(">QQI", terminal_id, batch_seq, len(records)), hashlib.sha256)
    for r in records:
        h.update(record_bytes(r))
    return h.digest()


def batch_mac_ok(key: bytes, terminal_id: int, batch_seq: int, records: Sequence[OfflineRecord],
                 mac: bytes) -> bool:
    return hmac.compare_digest(batch_mac(key, terminal_id, batch_seq, records), bytes(mac))


__all__ = ["PURCHASE_EP", "CardKeys", "IssuerKeys", "OfflineRecord", "batch_key", "batch_mac", "batch_mac_ok",
           "card_serial", "expected_tac", "record_bytes", "tac_ok", "terminal_id_bytes"]
