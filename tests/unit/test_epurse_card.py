"""The city-pass card application as a terminal and its SAM drive it: a whole offline purchase
(MAC1 checked by the card, MAC2 by the SAM, the TAC by the issuer), a torn answer recovered by
GET TRANSACTION PROOF, and every refusal with its status word and the purse untouched."""

from itertools import count

import pytest

from citycard.domain.epurse_crypto import (
    PurchaseInput,
    When,
    diversification_factor,
    diversify,
    purchase_mac1,
    purchase_mac2,
    purchase_session_key,
    purchase_tac,
)
from citycard.domain.offline import CardKeys
from citycard.protocols.apdu import Command, parse_response, select_by_aid
from citycard.protocols.epurse_card import CITY_PASS_AID, EpurseCard, PurseState

MK_DPK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")  # issuer master keys (test only)
MK_DTK = bytes.fromhex("F0E0D0C0B0A090807060504030201000")
CARD_NO = 33010050000000004
TERMINAL_ID = bytes.fromhex("000000001001")
WHEN = When.of("20261206", "081500")
FACTOR = diversification_factor(bytes.fromhex(f"{CARD_NO:020d}"))


def new_card(balance_fen: int = 5000) -> EpurseCard:
    randoms = (n.to_bytes(4, "big") for n in count(0x11223344))
    card = EpurseCard(CardKeys(diversify(MK_DPK, FACTOR), diversify(MK_DPK[::-1], FACTOR), diversify(MK_DTK, FACTOR)), PurseState(balance_fen),
                      lambda: next(randoms))
    card.power_on()
    assert parse_response(card.answer(select_by_aid(CITY_PASS_AID).encode())).sw == 0x9000
    return card


def init_purchase(card: EpurseCard, amount_fen: int, key_index: int = 1) -> bytes:
    data = bytes([key_index]) + amount_fen.to_bytes(4, "big") + TERMINAL_ID
    return card.answer(Command(0x80, 0x50, 0x01, 0x02, data, le=15).encode())


def debit(card: EpurseCard, seq: int, mac1: bytes) -> bytes:
    return card.answer(Command(0x80, 0x54, 0x01, 0x00, seq.to_bytes(4, "big") + WHEN.bcd() + mac1, le=8).encode())


def sam_mac1(init_answer: bytes, amount_fen: int, seq: int) -> tuple[bytes, bytes, PurchaseInput]:
    """What the terminal's SAM does with INITIALIZE's answer: (SESPK, MAC1, the purchase)."""
    r = parse_response(init_answer)
    assert r.sw == 0x9000 and len(r.data) == 15, r
    counter, card_random = int.from_bytes(r.data[4:6], "big"), r.data[11:15]
    p = PurchaseInput(amount_fen, TERMINAL_ID, seq, WHEN, card_random, counter)
    sespk = purchase_session_key(diversify(MK_DPK, FACTOR), card_random, counter, seq)
    return sespk, purchase_mac1(sespk, p), p


def balance(card: EpurseCard) -> int:
    r = parse_response(card.answer(bytes.fromhex("805C000204")))
    assert r.sw == 0x9000
    return int.from_bytes(r.data, "big")


def test_a_whole_offline_purchase() -> None:
    card = new_card(5000)
    assert balance(card) == 5000
    sespk, mac1, p = sam_mac1(init_purchase(card, 200), 200, seq=7)
    r = parse_response(debit(card, 7, mac1))
    assert r.sw == 0x9000
    tac, mac2 = r.data[:4], r.data[4:]
    assert mac2 == purchase_mac2(sespk, 200)  # the SAM's proof the card debited
    assert tac == purchase_tac(diversify(MK_DTK, FACTOR), p)  # the issuer's check of the record
    assert balance(card) == 4800 and card.state.offline_counter == 1

    # the terminal never got that answer (the card left the field): the proof is asked again
    again = parse_response(card.answer(Command(0x80, 0x5A, 0x00, 0x06, (0).to_bytes(2, "big"), le=8).encode()))
    assert again.sw == 0x9000 and again.data == mac2 + tac
    nothing = card.answer(Command(0x80, 0x5A, 0x00, 0x06, (1).to_bytes(2, "big"), le=8).encode())
    assert parse_response(nothing).sw == 0x9406  # no purchase with that counter: it did not happen


def test_a_wrong_mac1_debits_nothing_and_ends_the_purchase() -> None:
    card = new_card(5000)
    _, mac1, _ = sam_mac1(init_purchase(card, 200), 200, seq=8)
    forged = bytes([mac1[0] ^ 1]) + mac1[1:]
    assert parse_response(debit(card, 8, forged)).sw == 0x9302
    assert parse_response(debit(card, 8, mac1)).sw == 0x6985  # one try per INITIALIZE
    assert balance(card) == 5000 and card.state.offline_counter == 0


def test_another_amount_or_seq_than_initialized_fails_the_mac() -> None:
    card = new_card(5000)
    _, mac1, _ = sam_mac1(init_purchase(card, 200), 201, seq=9)  # the SAM was told another fare
    assert parse_response(debit(card, 9, mac1)).sw == 0x9302
    assert balance(card) == 5000


@pytest.mark.parametrize(("apdu", "sw"), [
    (bytes.fromhex("00A4040008A00000063201010600"), 0x6A82),  # another application
    (bytes.fromhex("805C0002"), 0x6985),  # after the failed SELECT above: nothing selected
])
def test_only_the_city_pass_application_answers(apdu: bytes, sw: int) -> None:
    card = new_card()
    card.answer(bytes.fromhex("00A4040008A00000063201010600"))
    assert parse_response(card.answer(apdu)).sw == sw


@pytest.mark.parametrize(("make", "sw"), [
    (lambda c: init_purchase(c, 9000), 0x9401),  # more than the balance
    (lambda c: init_purchase(c, 100, key_index=2), 0x9403),
    (lambda c: c.answer(bytes.fromhex("80CA9F7900")), 0x6D00),
    (lambda c: c.answer(bytes.fromhex("905C000204")), 0x6E00),
    (lambda c: c.answer(bytes.fromhex("805C")), 0x6700),  # not an APDU
    (lambda c: c.answer(Command(0x80, 0x50, 0x01, 0x02, bytes(5), le=15).encode()), 0x6700),
    (lambda c: debit(c, 1, bytes(4)), 0x6985),  # no INITIALIZE first
])
def test_refusals_name_their_status_word_and_touch_nothing(make, sw: int) -> None:  # noqa: ANN001
    card = new_card(5000)
    assert parse_response(make(card)).sw == sw
    assert balance(card) == 5000 and card.state.offline_counter == 0
