"""The city-pass card beyond the plain purchase (protocols/epurse_card.py, card_read.py,
card_store.py), driven as a terminal, SAM and issuer would (tests/support/card_terminal.py):
reading its files, the load, the compound purchase and its atomicity, the transaction log,
a blocked application, and the state serialisation. Each refusal names its status word and
leaves the card as it was."""

import copy
import json
from datetime import date
from itertools import count

import pytest

from citycard.domain.cards import Category
from citycard.domain.epurse_crypto import COMPOUND_PURCHASE, LOAD_EP, PURCHASE_EP
from citycard.domain.taps import TapKind
from citycard.protocols.apdu import Command, read_binary, read_record
from citycard.protocols.card_files import (
    AppStatus,
    HolderData,
    IdType,
    IssuerData,
    LogEntry,
    TransitRecord,
    personalise,
)
from citycard.protocols.card_store import card_from_dict, card_to_dict
from citycard.protocols.epurse_card import MAX_BALANCE_FEN, EpurseCard
from tests.support.card_terminal import (
    DEMO_KEYS,
    TERMINAL_ID,
    WHEN,
    CardTerminal,
    apdu_credit,
    apdu_debit,
    apdu_init,
    apdu_proof,
    apdu_update_capp,
)

CARD_NO = 33010050000000004


def randoms() -> "count[int]":
    return count(0x11223344)


def new_card(balance_fen: int = 5000, status: int = AppStatus.ACTIVE) -> tuple[EpurseCard, CardTerminal]:
    holder = HolderData(Category.STUDENT, IdType.RESIDENT_ID, "123X", bytes(range(16)))
    image = personalise(DEMO_KEYS, CARD_NO, balance_fen, Category.STUDENT, 330100, date(2026, 1, 1),
                        date(2031, 12, 31), holder=holder, status=status)
    it = randoms()
    card = EpurseCard.from_image(image, lambda: next(it).to_bytes(4, "big"))
    card.power_on()
    return card, CardTerminal(card.answer, CARD_NO)


def snapshot(card: EpurseCard) -> dict[str, object]:
    return card_to_dict(card)


# -- reading the files ----------------------------------------------------------------------
def test_read_binary_and_record_after_select() -> None:
    card, t = new_card()
    assert t.send(read_binary(sfi=0x15).encode()).sw == 0x6A82  # nothing selected: not in the MF
    assert t.select().ok
    issuer = IssuerData.decode(t.send(read_binary(sfi=0x15).encode()).check())
    assert issuer.card_no == CARD_NO and issuer.category == Category.STUDENT and issuer.issuer_code == 330100
    assert t.send(read_binary(5, sfi=0x15).encode()).check() == issuer.encode()[5:]
    assert t.send(read_binary(5, sfi=0x15, le=10).encode()).check() == issuer.serial
    assert t.send(read_binary(20, sfi=0x15, le=20).encode()).sw == 0x6C0A  # 10 bytes left: the exact Le
    assert HolderData.decode(t.send(read_binary(sfi=0x16).encode()).check()).id_tail == "123X"
    assert TransitRecord.decode(t.send(read_record(1, sfi=0x17).encode()).check()) == TransitRecord()


@pytest.mark.parametrize(("apdu", "sw"), [
    (read_binary(sfi=0x19), 0x6A82),  # no such file
    (read_binary(sfi=0x17), 0x6981),  # a record file
    (read_binary(sfi=0x18), 0x6981),
    (read_binary(30, sfi=0x15), 0x6B00),  # offset past the end
    (read_binary(0), 0x6986),  # no current EF
    (read_record(2, sfi=0x17), 0x6A83),  # no such record
    (read_record(1, sfi=0x18), 0x6A83),  # the log is empty
    (read_record(1, sfi=0x15), 0x6981),  # a binary file
    (read_record(1, sfi=0x1A), 0x6A82),
    (read_record(1), 0x6986),
    (Command(0x00, 0xB2, 0x01, 0xBD, le=256), 0x6A86),  # P2 not "record number in P1"
])
def test_read_refusals(apdu: Command, sw: int) -> None:
    card, t = new_card()
    t.select()
    before = snapshot(card)
    assert t.send(apdu.encode()).sw == sw
    assert snapshot(card) == before


# -- the load ---------------------------------------------------------------------------------
def test_a_load_credits_counts_logs_and_proves() -> None:
    card, t = new_card(5000)
    t.select()
    ld, tac = t.load(2000)
    assert ld.balance_before_fen == 5000 and ld.online_counter == 0
    assert t.balance() == 7000 and card.state.online_counter == 1 and card.state.offline_counter == 0
    entry = LogEntry.decode(t.send(read_record(1, sfi=0x18).encode()).check())
    assert entry == LogEntry(0, 2000, LOAD_EP, TERMINAL_ID, WHEN.date, WHEN.time)
    assert t.send(apdu_proof(LOAD_EP, 0)).check() == tac
    assert t.send(apdu_proof(LOAD_EP, 1)).sw == 0x9406
    assert t.send(apdu_proof(PURCHASE_EP, 0)).sw == 0x9406  # no purchase yet


def test_a_load_past_the_purse_maximum_is_refused() -> None:
    card, t = new_card(MAX_BALANCE_FEN - 100)
    t.select()
    before = snapshot(card)
    assert t.send(apdu_init(0x00, 0x01, 101, TERMINAL_ID, 16)).sw == 0x6A80
    assert t.send(apdu_init(0x00, 0x01, 0, TERMINAL_ID, 16)).sw == 0x6A80
    assert snapshot(card) == before
    t.load(100)
    assert t.balance() == MAX_BALANCE_FEN


def test_load_refusals_touch_nothing() -> None:
    card, t = new_card(5000)
    t.select()
    before = snapshot(card)
    assert t.send(apdu_credit(WHEN, bytes(4))).sw == 0x6985  # no INITIALIZE FOR LOAD
    assert t.send(apdu_init(0x00, 0x02, 100, TERMINAL_ID, 16)).sw == 0x9403  # another key index
    assert t.send(apdu_init(0x00, 0x01, 100, TERMINAL_ID, 16)).ok
    assert t.send(apdu_credit(WHEN, bytes(4))).sw == 0x9302  # a forged MAC2
    assert t.send(apdu_credit(WHEN, bytes(4))).sw == 0x6985  # one try per INITIALIZE
    assert t.send(apdu_init(0x00, 0x01, 100, TERMINAL_ID, 16)).ok
    assert t.send(apdu_debit(1, WHEN, bytes(4))).sw == 0x6985  # a DEBIT does not end a load
    assert snapshot(card) == before


# -- the compound purchase ----------------------------------------------------------------------
def transit_after_bus() -> TransitRecord:
    return TransitRecord(((1001, 1_765_008_900),), ((0, 20428, 1),), int(TapKind.BUS), 42, 150)


def test_a_compound_purchase_debits_and_rewrites_the_transit_record_together() -> None:
    card, t = new_card(5000)
    t.select()
    done = t.purchase(150, seq=7, transit=transit_after_bus())
    assert done.sw == 0x9000 and done.p.transaction_type == COMPOUND_PURCHASE
    assert t.balance() == 4850 and card.state.offline_counter == 1
    assert TransitRecord.decode(t.send(read_record(1, sfi=0x17).encode()).check()) == transit_after_bus()
    entry = LogEntry.decode(t.send(read_record(1, sfi=0x18).encode()).check())
    assert (entry.counter, entry.amount_fen, entry.transaction_type) == (0, 150, COMPOUND_PURCHASE)
    assert t.send(apdu_proof(COMPOUND_PURCHASE, 0)).check() == done.mac2 + done.tac
    assert t.send(apdu_proof(PURCHASE_EP, 0)).sw == 0x9406  # that counter was a compound purchase


def test_a_failed_compound_debit_writes_neither_purse_nor_record() -> None:
    card, t = new_card(5000)
    t.select()
    before = snapshot(card)
    assert t.purchase(150, seq=7, transit=transit_after_bus(), mac1_bit_flip=True).sw == 0x9302
    assert snapshot(card) == before  # the cached record was dropped with the debit
    # a new INITIALIZE starts clean: the earlier cache is gone
    assert t.send(apdu_init(0x03, 0x01, 150, TERMINAL_ID, 15)).ok
    assert t.select().ok  # a SELECT ends it too
    assert snapshot(card) == before


def test_a_compound_purchase_without_an_update_keeps_the_record() -> None:
    card, t = new_card(5000)
    t.select()
    assert t.purchase(150, seq=7, compound=True).sw == 0x9000
    assert card.files.transit == TransitRecord() and t.balance() == 4850


@pytest.mark.parametrize(("setup", "apdu", "sw"), [
    (None, apdu_update_capp(TransitRecord()), 0x6985),  # no INITIALIZE FOR CAPP PURCHASE
    ("purchase", apdu_update_capp(TransitRecord()), 0x6985),  # a plain purchase caches nothing
    ("capp", Command(0x80, 0xDC, 0x02, 0xB8, TransitRecord().encode()).encode(), 0x6A83),
    ("capp", Command(0x80, 0xDC, 0x01, 0xC0, TransitRecord().encode()).encode(), 0x6981),  # the log
    ("capp", Command(0x80, 0xDC, 0x01, 0xC8, TransitRecord().encode()).encode(), 0x6A82),
    ("capp", Command(0x80, 0xDC, 0x01, 0xB9, TransitRecord().encode()).encode(), 0x6A86),
    ("capp", Command(0x80, 0xDC, 0x01, 0xB8, bytes(63)).encode(), 0x6700),
    ("capp", Command(0x80, 0xDC, 0x01, 0xB8, bytes(64)).encode(), 0x6A80),  # format byte 00
    ("capp", apdu_init(0x03, 0x01, 6000, TERMINAL_ID, 15), 0x9401),
    (None, apdu_init(0x02, 0x01, 100, TERMINAL_ID, 15), 0x6A86),  # no such INITIALIZE
])
def test_compound_refusals_touch_nothing(setup: str | None, apdu: bytes, sw: int) -> None:
    card, t = new_card(5000)
    t.select()
    if setup:
        assert t.send(apdu_init(0x03 if setup == "capp" else 0x01, 0x01, 150, TERMINAL_ID, 15)).ok
    before = snapshot(card)
    assert t.send(apdu).sw == sw
    assert snapshot(card) == before


# -- the log, blocked cards ------------------------------------------------------------------
def test_the_log_keeps_ten_entries_newest_first() -> None:
    card, t = new_card(90_000)
    t.select()
    for seq in range(11):
        assert t.purchase(10 + seq, seq=seq).sw == 0x9000
    t.load(500)
    entries = [LogEntry.decode(t.send(read_record(n, sfi=0x18).encode()).check()) for n in range(1, 11)]
    assert entries[0].transaction_type == LOAD_EP and entries[0].amount_fen == 500
    assert [e.counter for e in entries[1:]] == list(range(10, 1, -1))
    assert t.send(read_record(11, sfi=0x18).encode()).sw == 0x6A83


def test_a_blocked_application_cannot_be_selected_or_debited() -> None:
    card, t = new_card(5000, status=AppStatus.BLOCKED)
    before = snapshot(card)
    assert t.select().sw == 0x6A81
    assert t.send(apdu_init(0x01, 0x01, 100, TERMINAL_ID, 15)).sw == 0x6985
    assert t.send(read_binary(sfi=0x15).encode()).sw == 0x6A82
    assert snapshot(card) == before


# -- state serialisation ----------------------------------------------------------------------
def test_the_state_round_trips_through_json() -> None:
    card, t = new_card(5000)
    t.select()
    t.purchase(150, seq=7, transit=transit_after_bus())
    t.load(1000)
    doc = json.loads(json.dumps(card_to_dict(card)))
    it = count(0x55667788)
    again = card_from_dict(doc, lambda: next(it).to_bytes(4, "big"))
    assert card_to_dict(again) == doc
    assert again.state == card.state and again.files == card.files and again.keys == card.keys
    t2 = CardTerminal(again.answer, CARD_NO)
    again.power_on()
    t2.select()
    assert t2.send(apdu_proof(COMPOUND_PURCHASE, 0)).ok and t2.send(apdu_proof(LOAD_EP, 0)).ok
    assert t2.purchase(100, seq=8).sw == 0x9000 and t2.balance() == 5750


def _mutations() -> list[tuple[str, object, str]]:
    return [
        ("format", "something-else", "not a city-pass card state"),
        ("version", 2, "version 2 is not supported"),
        ("card_no", 1, "card_no 1 is not the issuer data"),
        ("keys.dpk", "00", "keys.dpk must be 16 bytes"),
        ("keys.dlk", "zz" * 16, "keys.dlk is not hex"),
        ("files.issuer", "00" * 30, "files.issuer: issuer data bytes|files.issuer: .*date"),
        ("files.transit", "02" + "00" * 63, "files.transit: transit record format"),
        ("purse.balance_fen", -1, "purse.balance_fen must be an int"),
        ("purse.offline_counter", "1", "purse.offline_counter must be an int"),
        ("purse.last_proof", {"counter": 0, "mac2": "00" * 4, "tac": "00" * 4, "type": 2}, "last_proof.type"),
        ("log", ["00" * 22], r"log\[0\]: transaction log record"),
        ("purse", None, "purse must be an object"),
    ]


@pytest.mark.parametrize(("path", "value", "message"), _mutations())
def test_a_bad_or_foreign_state_is_refused_naming_the_field(path: str, value: object, message: str) -> None:
    card, _ = new_card()
    doc = copy.deepcopy(card_to_dict(card))
    *parents, leaf = path.split(".")
    target = doc
    for p in parents:
        target = target[p]
    target[leaf] = value
    with pytest.raises(ValueError, match=message):
        card_from_dict(doc, lambda: bytes(4))
    with pytest.raises(ValueError, match="card state must be an object"):
        card_from_dict([1, 2], lambda: bytes(4))
