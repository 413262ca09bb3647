"""The offline record's checks: the card's TAC under the issuer's keys, the batch MAC."""

from dataclasses import replace
from itertools import count

import pytest

from citycard.domain.epurse_crypto import PurchaseInput, When, purchase_mac1, purchase_session_key
from citycard.domain.offline import (
    IssuerKeys,
    OfflineRecord,
    batch_key,
    batch_mac,
    batch_mac_ok,
    card_serial,
    tac_ok,
    terminal_id_bytes,
)
from citycard.protocols.apdu import Command, parse_response, select_by_aid
from citycard.protocols.epurse_card import CITY_PASS_AID, EpurseCard, PurseState

KEYS = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                         "F0E0D0C0B0A090807060504030201000")
CARD_NO, TERMINAL, SEQ = 33010050000000004, 4097, 77
WHEN = When.of("20261206", "081500")


def purchase_on_card(amount_fen: int) -> OfflineRecord:
    """A real purchase on the pure card, the SAM's half done with the master purchase key."""
    randoms = (n.to_bytes(4, "big") for n in count(0x0A0B0C0D))
    card = EpurseCard(KEYS.for_card(CARD_NO), PurseState(1000), lambda: next(randoms))
    card.power_on()
    assert parse_response(card.answer(select_by_aid(CITY_PASS_AID).encode())).sw == 0x9000
    init = parse_response(card.answer(Command(0x80, 0x50, 0x01, 0x02, b"\x01" + amount_fen.to_bytes(4, "big")
                                              + terminal_id_bytes(TERMINAL), le=15).encode()))
    counter, random4 = int.from_bytes(init.data[4:6], "big"), init.data[11:15]
    p = PurchaseInput(amount_fen, terminal_id_bytes(TERMINAL), SEQ, WHEN, random4, counter)
    mac1 = purchase_mac1(purchase_session_key(KEYS.for_card(CARD_NO).dpk, random4, counter, SEQ), p)
    debit = parse_response(card.answer(Command(0x80, 0x54, 0x01, 0x00, SEQ.to_bytes(4, "big") + WHEN.bcd() + mac1,
                                               le=8).encode()))
    assert debit.sw == 0x9000
    return OfflineRecord(CARD_NO, counter, amount_fen, card.state.balance_fen, 0x06, TERMINAL, SEQ, WHEN,
                         debit.data[:4], kind=1, route=12)


def test_the_cards_tac_checks_under_the_issuers_keys_and_nothing_else_does() -> None:
    record = purchase_on_card(200)
    assert tac_ok(KEYS.dtk(CARD_NO), record)
    # The standard's TAC does not cover the card's offline counter: the SAM's (terminal id, seq)
    # binds the record instead, and the batch MAC covers the counter.
    assert tac_ok(KEYS.dtk(CARD_NO), replace(record, offline_counter=1))
    for changed in (replace(record, amount_fen=199),
                    replace(record, terminal_id=4098), replace(record, terminal_seq=78),
                    replace(record, when=When.of("20261206", "081501")), replace(record, tac=bytes(4)),
                    replace(record, transaction_type=0x09)):
        assert not tac_ok(KEYS.dtk(CARD_NO), changed), changed
    assert not tac_ok(KEYS.dtk(CARD_NO + 1), record)


def test_the_batch_mac_covers_every_field_of_every_record() -> None:
    a, b = purchase_on_card(200), purchase_on_card(300)
    key = batch_key(bytes(16), TERMINAL)
    mac = batch_mac(key, TERMINAL, 5, [a, b])
    assert len(mac) == 32 and batch_mac_ok(key, TERMINAL, 5, [a, b], mac)
    assert not batch_mac_ok(key, TERMINAL, 6, [a, b], mac)
    assert not batch_mac_ok(key, TERMINAL, 5, [b, a], mac)
    assert not batch_mac_ok(key, TERMINAL, 5, [a, replace(b, route=13)], mac)
    assert not batch_mac_ok(batch_key(bytes(16), TERMINAL + 1), TERMINAL, 5, [a, b], mac)


def test_keys_and_ids_are_checked() -> None:
    assert card_serial(CARD_NO).hex() == "00033010050000000004"
    with pytest.raises(ValueError, match="card number"):
        card_serial(0)
    with pytest.raises(ValueError, match="terminal id"):
        terminal_id_bytes(2**48)
    with pytest.raises(ValueError, match="load master key"):
        IssuerKeys.of_hex("00" * 16, "00" * 8, "00" * 16)
