"""The validator's sale against the pure card: fare from the host's rules, the compound purchase,
the record kept before and after the debit, a torn sale settled on the card's return, and
every refusal with the card untouched. The store is SQLite in a temporary directory."""

import asyncio
from collections.abc import Callable
from datetime import date
from itertools import count
from pathlib import Path

import pytest

from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import CardState, Category
from citycard.domain.offline import IssuerKeys, batch_key, batch_mac_ok, tac_ok
from citycard.domain.rules import decide
from citycard.domain.sam import SoftSam
from citycard.domain.taps import Tap, TapKind
from citycard.errors import CityCardError
from citycard.protocols.apdu import parse_command
from citycard.protocols.card_files import TransitRecord, personalise
from citycard.protocols.codes import OfflineCode
from citycard.protocols.epurse_card import EpurseCard
from citycard.validator.sale import Validator
from citycard.validator.store import Store
from citycard.validator.uploader import upload_one

KEYS = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                         "F0E0D0C0B0A090807060504030201000")
BATCH_MASTER = bytes(range(16))
TABLES = shipped_tables()
CARD_NO, TERMINAL, ROUTE = 33010000000000013, 4097, 12
NOW_MS = 1_796_000_000_000  # 2026-11-29, inside the shipped table's validity
TODAY = date(2026, 11, 29)


class Pulled(CityCardError):
    """The card left the field."""


def new_card(balance_fen: int = 5000, category: int = Category.ADULT) -> EpurseCard:
    randoms = (n.to_bytes(4, "big") for n in count(0x51525354))
    image = personalise(KEYS, CARD_NO, balance_fen, category, 330100, date(2024, 1, 1), date(2030, 12, 31))
    return EpurseCard.from_image(image, lambda: next(randoms))


def link(card: EpurseCard, tear_at_ins: int | None = None, apply_torn: bool = True) -> Callable:
    """The card in the field. ``tear_at_ins``: the card leaves on that command, after (or,
    with ``apply_torn=False``, before) it took effect."""
    card.power_on()

    async def transmit(apdu: bytes) -> bytes:
        if tear_at_ins is not None and parse_command(apdu).ins == tear_at_ins:
            if apply_torn:
                card.answer(apdu)
            raise Pulled("card removed")
        return card.answer(apdu)
    return transmit


def validator(tmp_path: Path, max_records: int = 100) -> Validator:
    store = Store(tmp_path / "store.sqlite3", TERMINAL, max_records)
    sam = SoftSam(TERMINAL, KEYS.mpk, batch_key(BATCH_MASTER, TERMINAL), store.next_seq())
    return Validator(sam, store, TABLES, int(TapKind.BUS), ROUTE)


def sell(v: Validator, transmit: Callable, now_ms: int = NOW_MS):  # type: ignore[no-untyped-def]
    return asyncio.run(v.sell(transmit, now_ms, TODAY))


def host_fare(balance_fen: int) -> int:
    d = decide(TABLES, CardState(CARD_NO, 0, Category.ADULT, balance_fen),
               Tap(TERMINAL, 1, CARD_NO, NOW_MS, int(TapKind.BUS), ROUTE))
    assert d.ok
    return d.fare_fen


def test_a_sale_charges_the_hosts_fare_and_keeps_a_record_the_issuer_accepts(tmp_path: Path) -> None:
    card, v = new_card(), validator(tmp_path)
    sale = sell(v, link(card))
    fare = host_fare(5000)
    assert sale.ok and sale.fare_fen == fare > 0 and sale.balance_fen == 5000 - fare, sale
    assert card.state.balance_fen == 5000 - fare and card.state.offline_counter == 1
    assert sale.apdus == 7
    [record] = v.store.to_upload(10)
    assert (record.card_no, record.offline_counter, record.amount_fen, record.balance_after_fen) == \
        (CARD_NO, 0, fare, 5000 - fare)
    assert record.transaction_type == 0x09 and record.terminal_seq == 1 and v.sam.next_seq == 2
    assert tac_ok(KEYS.dtk(CARD_NO), record)
    # The card wrote the new transit record with the debit: this terminal is in its memory.
    assert card.files.transit.recent[-1][0] == TERMINAL and card.files.transit.last_fare_fen == fare
    assert "OK card" in sale.display() and "balance" in sale.display()


def test_the_same_card_again_is_passback_and_pays_nothing(tmp_path: Path) -> None:
    card, v = new_card(), validator(tmp_path)
    assert sell(v, link(card)).ok
    balance = card.state.balance_fen
    again = sell(v, link(card), NOW_MS + 5_000)
    assert not again.ok and again.result == "PASSBACK" and card.state.balance_fen == balance
    assert v.store.waiting() == 1


def test_a_torn_debit_is_settled_when_the_card_comes_back(tmp_path: Path) -> None:
    card, v = new_card(), validator(tmp_path)
    torn = sell(v, link(card, tear_at_ins=0x54, apply_torn=True))
    assert not torn.ok and torn.result == "CARD_REMOVED" and "present the card again" in torn.reason
    assert card.state.offline_counter == 1  # the card did debit itself
    assert v.store.pending_count() == 1 and v.store.to_upload(10) == []
    back = sell(v, link(card), NOW_MS + 1_000)
    assert back.recovered == 1 and back.result == "PASSBACK"  # settled, then the same passage
    [record] = v.store.to_upload(10)
    assert record.offline_counter == 0 and tac_ok(KEYS.dtk(CARD_NO), record)


def test_a_debit_that_never_reached_the_card_is_dropped_and_the_card_sold_again(tmp_path: Path) -> None:
    card, v = new_card(), validator(tmp_path)
    assert sell(v, link(card, tear_at_ins=0x54, apply_torn=False)).result == "CARD_REMOVED"
    assert card.state.balance_fen == 5000 and v.store.pending_count() == 1
    again = sell(v, link(card), NOW_MS + 1_000)
    assert again.ok and again.recovered == 0 and v.store.pending_count() == 0
    [record] = v.store.to_upload(10)
    assert record.terminal_seq == 2 and tac_ok(KEYS.dtk(CARD_NO), record)


@pytest.mark.parametrize("case", ["hotlisted", "low balance", "store full", "expired"])
def test_refusals_leave_the_card_untouched(tmp_path: Path, case: str) -> None:
    card, v = new_card(balance_fen=10 if case == "low balance" else 5000), validator(tmp_path, max_records=1)
    today = TODAY
    if case == "hotlisted":
        v.store.hotlist_apply(False, [CARD_NO], [], 1)
    elif case == "store full":
        assert sell(v, link(new_other_card())).ok
    elif case == "expired":
        today = date(2031, 1, 1)
    before = (card.state.balance_fen, card.state.offline_counter, card.files.transit)
    sale = asyncio.run(v.sell(link(card), NOW_MS, today))
    assert not sale.ok
    assert sale.result == {"hotlisted": "HOTLISTED", "low balance": "INSUFFICIENT_FUNDS", "store full": "STORE_FULL",
                           "expired": "EXPIRED"}[case]
    assert (card.state.balance_fen, card.state.offline_counter, card.files.transit) == before


def new_other_card() -> EpurseCard:
    image = personalise(KEYS, CARD_NO + 1, 5000, Category.ADULT, 330100, date(2024, 1, 1), date(2030, 12, 31))
    return EpurseCard.from_image(image, lambda: b"\x01\x02\x03\x04")


def test_a_card_of_another_application_or_a_garbled_answer_is_refused_clearly(tmp_path: Path) -> None:
    v = validator(tmp_path)

    async def other_app(apdu: bytes) -> bytes:
        return bytes.fromhex("6A82")

    async def garbled(apdu: bytes) -> bytes:
        return b"\x90"

    sale = sell(v, other_app)
    assert not sale.ok and sale.result == "WRONG_APPLICATION" and "not a city-pass card" in sale.reason
    sale = sell(v, garbled)
    assert not sale.ok and sale.result == "CARD_ERROR" and "malformed" in sale.reason
    assert v.store.waiting() == 0


def test_uploads_send_a_fixed_signed_batch_again_until_answered(tmp_path: Path) -> None:
    v = validator(tmp_path)
    for i in range(3):
        card = EpurseCard.from_image(personalise(KEYS, CARD_NO + 10 * i, 5000, Category.ADULT, 330100,
                                                 date(2024, 1, 1), date(2030, 12, 31)), lambda: b"\x0a\x0b\x0c\x0d")
        assert sell(v, link(card)).ok
    sent: list[tuple[int, list[int]]] = []

    async def lost(batch_seq: int, records, mac: bytes):  # type: ignore[no-untyped-def]
        sent.append((batch_seq, [r.terminal_seq for r in records]))
        raise Pulled("connection lost")

    async def answered(batch_seq: int, records, mac: bytes):  # type: ignore[no-untyped-def]
        assert batch_mac_ok(batch_key(BATCH_MASTER, TERMINAL), TERMINAL, batch_seq, records, mac)
        sent.append((batch_seq, [r.terminal_seq for r in records]))
        return [1, 2]  # duplicate (kept before), bad TAC

    with pytest.raises(Pulled):
        asyncio.run(upload_one(v.store, v.sam, lost, 2))
    v.store.sold(99, b"xxxx")  # nothing: no such pending sale; the open batch stays as it was
    done = asyncio.run(upload_one(v.store, v.sam, answered, 2))
    assert sent == [(1, [1, 2]), (1, [1, 2])]
    assert done is not None and (done.batch_seq, done.kept, done.refused) == (1, 1, 1)
    assert v.store.counts() == {"pending": 0, "sold": 1, "refused": 1}
    done = asyncio.run(upload_one(v.store, v.sam, answered_one(), 2))
    assert done is not None and done.batch_seq == 2 and v.store.waiting() == 0
    assert asyncio.run(upload_one(v.store, v.sam, answered_one(), 2)) is None


def answered_one():  # type: ignore[no-untyped-def]
    async def send(batch_seq: int, records, mac: bytes):  # type: ignore[no-untyped-def]
        return [0] * len(records)
    return send


def test_transit_record_round_trips_what_decide_needs() -> None:
    card = CardState(CARD_NO, 0, Category.ADULT, 100)
    card.recent = {TERMINAL: NOW_MS - NOW_MS % 1000}
    assert TransitRecord.from_card_state(card).to_card_state_fields()["recent"] == card.recent


def test_an_unknown_status_word_or_a_garbled_debit_answer_loses_no_record(tmp_path: Path) -> None:
    v = validator(tmp_path)
    card = new_card()

    def answering(ins: int, reply: bytes, apply: bool) -> Callable:
        inner = link(card)

        async def transmit(apdu: bytes) -> bytes:
            if parse_command(apdu).ins == ins:
                if apply:
                    await inner(apdu)
                return reply
            return await inner(apdu)
        return transmit

    # INITIALIZE answered with a word no standard defines: refused by name, nothing kept or debited.
    odd = sell(v, answering(0x50, bytes.fromhex("1234"), apply=False))
    assert not odd.ok and odd.result == "CARD_ERROR" and "1234" in odd.reason and "unknown status word" in odd.reason
    assert card.state.balance_fen == 5000 and v.store.waiting() == 0
    # DEBIT took effect on the card but its answer came back garbled: the sale stays pending,
    # and the card's own proof settles it next time.
    garbled = sell(v, answering(0x54, b"\x6f", apply=True), NOW_MS + 1_000)
    assert not garbled.ok and garbled.result == "CARD_ERROR" and "malformed" in garbled.reason
    assert card.state.offline_counter == 1 and v.store.pending_count() == 1
    back = sell(v, link(card), NOW_MS + 2_000)
    assert back.recovered == 1
    [record] = v.store.to_upload(10)
    assert tac_ok(KEYS.dtk(CARD_NO), record) and record.balance_after_fen == card.state.balance_fen


def test_records_forwarded_to_their_issuer_leave_the_store_an_unknown_issuer_stays_refused(tmp_path: Path) -> None:
    v = validator(tmp_path)
    for i in range(2):
        card = EpurseCard.from_image(personalise(KEYS, CARD_NO + 10 * i, 5000, Category.ADULT, 330100,
                                                 date(2024, 1, 1), date(2030, 12, 31)), lambda: b"\x0a\x0b\x0c\x0d")
        assert sell(v, link(card)).ok

    async def answered(batch_seq: int, records, mac: bytes):  # type: ignore[no-untyped-def]
        return [int(OfflineCode.FORWARDED), int(OfflineCode.UNKNOWN_ISSUER)]

    done = asyncio.run(upload_one(v.store, v.sam, answered, 2))
    assert done is not None and (done.kept, done.refused) == (1, 1)
    assert v.store.counts() == {"pending": 0, "sold": 0, "refused": 1}
