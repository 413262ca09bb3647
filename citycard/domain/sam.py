"""The terminal's SAM in software: it holds the issuer's master purchase key and the terminal's
batch key, computes MAC1, checks MAC2, keeps the terminal's transaction seq and signs upload
batches (docs/card.md, "The SAM"). No other part of the terminal sees a key.

A hardware PSAM in a second reader does the same through APDUs; the validator talks to either
through these four calls. The seq is state the shell persists: ``take_seq`` is called inside
the same durable write that keeps the pending sale, so a seq is never used twice.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from .epurse_crypto import (
    PurchaseInput,
    When,
    diversification_factor,
    diversify,
    purchase_mac1,
    purchase_mac2,
    purchase_session_key,
    same_mac,
)
from .offline import OfflineRecord, batch_mac, card_serial, terminal_id_bytes

MAX_TERMINAL_SEQ = 0xFFFFFFFF


class SamExhausted(ValueError):
    """The terminal's transaction seq is used up: the SAM must be replaced."""


@dataclass(frozen=True, slots=True)
class PurchaseTicket:
    """One purchase in progress: MAC1 to send, and the session key to check MAC2 with (kept
    here, never shown)."""

    terminal_seq: int
    mac1: bytes
    input: PurchaseInput
    _sespk: bytes = field(repr=False)

    def mac2_ok(self, mac2: bytes) -> bool:
        return same_mac(purchase_mac2(self._sespk, self.input.amount_fen), mac2)


@dataclass
class SoftSam:
    terminal_id: int
    mpk: bytes = field(repr=False)  # the issuer's master purchase key
    batch_key: bytes = field(repr=False)  # this terminal's batch key (offline.batch_key)
    next_seq: int = 1

    def __post_init__(self) -> None:
        self.terminal_id6 = terminal_id_bytes(self.terminal_id)
        if not 1 <= self.next_seq <= MAX_TERMINAL_SEQ + 1:
            raise ValueError(f"terminal seq must be 1..{MAX_TERMINAL_SEQ}, got {self.next_seq}")

    def take_seq(self) -> int:
        if self.next_seq > MAX_TERMINAL_SEQ:
            raise SamExhausted(f"terminal {self.terminal_id}: transaction seq used up")
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def purchase(self, card_no: int, card_random: bytes, offline_counter: int, amount_fen: int, when: When,
                 transaction_type: int, terminal_seq: int) -> PurchaseTicket:
        """MAC1 for DEBIT FOR (CAPP) PURCHASE, from INITIALIZE's answer and a seq from take_seq."""
        dpk = diversify(self.mpk, diversification_factor(card_serial(card_no)))
        p = PurchaseInput(amount_fen, self.terminal_id6, terminal_seq, when, card_random, offline_counter,
                          transaction_type)
        sespk = purchase_session_key(dpk, card_random, offline_counter, terminal_seq)
        return PurchaseTicket(terminal_seq, purchase_mac1(sespk, p), p, sespk)

    def sign_batch(self, batch_seq: int, records: Sequence[OfflineRecord]) -> bytes:
        return batch_mac(self.batch_key, self.terminal_id, batch_seq, records)
