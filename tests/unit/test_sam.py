"""The software SAM: MAC1 the card accepts, MAC2 checked, the seq never reused or past its end,
and the batch MAC the host checks."""

import pytest

from citycard.domain.epurse_crypto import (
    COMPOUND_PURCHASE,
    PURCHASE_EP,
    When,
    purchase_mac2,
    purchase_session_key,
)
from citycard.domain.offline import IssuerKeys, batch_key
from citycard.domain.sam import MAX_TERMINAL_SEQ, SamExhausted, SoftSam

KEYS = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                         "F0E0D0C0B0A090807060504030201000")
CARD_NO, TERMINAL = 33010000000000013, 4097
WHEN = When.of("20261206", "081500")


def test_the_ticket_checks_only_the_cards_own_mac2() -> None:
    sam = SoftSam(TERMINAL, KEYS.mpk, batch_key(bytes(16), TERMINAL))
    seq = sam.take_seq()
    ticket = sam.purchase(CARD_NO, b"\x01\x02\x03\x04", 7, 200, WHEN, COMPOUND_PURCHASE, seq)
    card_sespk = purchase_session_key(KEYS.for_card(CARD_NO).dpk, b"\x01\x02\x03\x04", 7, seq)
    assert ticket.mac2_ok(purchase_mac2(card_sespk, 200))
    assert not ticket.mac2_ok(purchase_mac2(card_sespk, 201))
    other = purchase_session_key(KEYS.for_card(CARD_NO + 1).dpk, b"\x01\x02\x03\x04", 7, seq)
    assert not ticket.mac2_ok(purchase_mac2(other, 200))
    assert "mpk" not in repr(sam) and "_sespk" not in repr(ticket)
    assert ticket.input.transaction_type == COMPOUND_PURCHASE
    assert sam.purchase(CARD_NO, b"\x01\x02\x03\x04", 7, 200, WHEN, PURCHASE_EP, seq).mac1 != ticket.mac1


def test_the_seq_counts_up_and_stops_at_its_end() -> None:
    sam = SoftSam(TERMINAL, KEYS.mpk, bytes(32), next_seq=MAX_TERMINAL_SEQ - 1)
    assert (sam.take_seq(), sam.take_seq()) == (MAX_TERMINAL_SEQ - 1, MAX_TERMINAL_SEQ)
    with pytest.raises(SamExhausted, match="used up"):
        sam.take_seq()
    with pytest.raises(ValueError, match="terminal seq"):
        SoftSam(TERMINAL, KEYS.mpk, bytes(32), next_seq=0)
