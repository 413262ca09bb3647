"""The card's files (protocols/card_files.py): exact layouts, canonical round trips, every bad
byte refused with the field named, and the transit record against CardState and the fare
rules' apply_effects."""

from datetime import date

import pytest

from citycard.domain.cards import CardState, Category
from citycard.domain.offline import IssuerKeys, card_serial
from citycard.domain.rules import apply_effects
from citycard.domain.taps import TapKind
from citycard.protocols.card_files import (
    AppStatus,
    Entered,
    HolderData,
    IdType,
    IssuerData,
    LogEntry,
    TransitRecord,
    id_digest,
    log_append,
    personalise,
)

KEYS = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                         "F0E0D0C0B0A090807060504030201000")
CARD_NO = 33010050000000004


def issuer_data() -> IssuerData:
    return IssuerData(330100, card_serial(CARD_NO), date(2026, 1, 1), date(2031, 12, 31), Category.STUDENT)


def test_issuer_data_layout_and_round_trip() -> None:
    d = issuer_data()
    raw = d.encode()
    # issuer 330100, type 01, version 01, serial, start, expiry, category 01, status 00, RFU
    assert raw.hex().upper() == "3301000101" "00033010050000000004" "20260101" "20311231" "0100" "0000000000"
    assert IssuerData.decode(raw) == d and d.card_no == CARD_NO and not d.blocked


@pytest.mark.parametrize(("at", "byte", "field"), [
    (0, 0x3A, "issuer code"), (5, 0xAB, "application serial"), (17, 0x13, "start date"),
    (21, 0x99, "expiry date"), (23, 0x09, "card category"), (24, 0x05, "application status"),
    (27, 0x01, "reserved"),
])
def test_issuer_data_bad_bytes_name_the_field(at: int, byte: int, field: str) -> None:
    raw = bytearray(issuer_data().encode())
    raw[at] = byte
    with pytest.raises(ValueError, match=field):
        IssuerData.decode(bytes(raw))


def test_issuer_data_refuses_wrong_length_and_expiry_before_start() -> None:
    with pytest.raises(ValueError, match="30 bytes"):
        IssuerData.decode(bytes(29))
    with pytest.raises(ValueError, match="expiry date"):
        IssuerData(330100, card_serial(CARD_NO), date(2026, 1, 1), date(2025, 1, 1), 0)


def test_holder_data_keeps_no_plain_identity() -> None:
    serial = card_serial(CARD_NO)
    h = HolderData.of_id(Category.ELDERLY, IdType.RESIDENT_ID, "33010619500101123x", serial)
    raw = h.encode()
    assert len(raw) == HolderData.LENGTH and b"330106" not in raw
    assert raw[:6] == bytes([2, 1]) + b"123X" and raw[6:22] == id_digest("33010619500101123X", serial)
    assert HolderData.decode(raw) == h
    assert id_digest("33010619500101123X", card_serial(CARD_NO + 1)) != h.id_digest  # salted per card
    anonymous = HolderData(Category.ADULT)
    assert HolderData.decode(anonymous.encode()) == anonymous and anonymous.encode() == bytes(24)
    with pytest.raises(ValueError, match="ID document type"):
        HolderData.decode(bytes([0, 7]) + bytes(22))
    with pytest.raises(ValueError, match="ID tail"):
        HolderData.decode(bytes([0, 1]) + b"\xff123" + bytes(18))


def test_transit_record_layout() -> None:
    t = TransitRecord(((1001, 1_765_000_000),), ((0, 20428, 2),), int(TapKind.BUS), 42, 150,
                      Entered(int(TapKind.BIKE_RENT), 7, 1_765_000_100, 200))
    raw = t.encode()
    assert len(raw) == 64
    assert raw.hex().upper() == (
        "0101" "000003E9" "6933C340" + "00" * 24 + "01" "00" "4FCC" "02" + "00" * 4
        + "01" "0000002A" "00000096" + "02" "00000007" "6933C3A4" "0000C8")
    assert TransitRecord.decode(raw) == t
    assert TransitRecord().encode() == bytes([1]) + bytes(63)


@pytest.mark.parametrize(("at", "byte", "field"), [
    (0, 0x02, "format"), (1, 5, "recent count"), (34, 3, "ride counter count"), (20, 1, "unused recent"),
    (40, 1, "unused ride"), (43, 99, "last tap kind"), (52, 1, "entered kind"), (60, 1, "no entered kind"),
])
def test_transit_record_bad_bytes_name_the_field(at: int, byte: int, field: str) -> None:
    raw = bytearray(TransitRecord().encode())
    raw[at] = byte
    with pytest.raises(ValueError, match=field):
        TransitRecord.decode(bytes(raw))


def test_transit_record_carries_what_apply_effects_changes() -> None:
    """A validator: CardState from the card, apply_effects, the record back, the same state."""
    card = CardState(CARD_NO, 0, Category.STUDENT, 5000)
    TransitRecord().apply_to(card)
    assert (card.recent, card.rides, card.rental, card.parking) == (None, None, None, None)
    t0 = 1_765_000_000_000
    for i in range(6):  # six terminals: the card keeps the newest four, oldest first
        apply_effects(card, int(TapKind.BUS), 42, 1000 + i, t0 + i * 60_000, (-150, 0, 0, 0, 0, 0), 0,
                      20428 + i // 3, True)
    apply_effects(card, int(TapKind.BIKE_RENT), 7, 2000, t0 + 999_999, (0, 0, 0, 0, 0, 0), -1, 20429, False)
    rec = TransitRecord.from_card_state(card, int(TapKind.BIKE_RENT), 7, 0)
    back = CardState(CARD_NO, 0, Category.STUDENT, 0)
    TransitRecord.decode(rec.encode()).apply_to(back)
    assert back.recent == card.recent and list(back.recent or {}) == [1002, 1003, 1004, 1005]
    assert back.rides == card.rides == {(0, 20428): 3, (0, 20429): 3}
    assert back.rental == (7, (t0 + 999_999) // 1000 * 1000, 0)  # the card keeps seconds
    assert back.parking is None


def test_transit_record_refuses_two_open_sessions_and_caps_rides() -> None:
    card = CardState(CARD_NO, 0, 0, 0)
    card.rental, card.parking = (1, 0, 0), (2, 0)
    with pytest.raises(ValueError, match="one open two-tap session"):
        TransitRecord.from_card_state(card)
    card.rental, card.rides = None, {(0, 1): 300, (1, 2): 1, (2, 3): 1}
    rec = TransitRecord.from_card_state(card)
    assert rec.rides == ((1, 2, 1), (2, 3, 1)) and rec.entered == Entered(int(TapKind.PARKING_ENTRY), 2, 0)


def test_log_entry_layout_and_cycle() -> None:
    e = LogEntry(3, 150, 0x06, bytes.fromhex("000000001001"), bytes.fromhex("20261206"), bytes.fromhex("081500"))
    assert e.encode().hex().upper() == "0003" "000000" "00000096" "06" "000000001001" "20261206" "081500"
    assert LogEntry.decode(e.encode()) == e
    with pytest.raises(ValueError, match="log date"):
        LogEntry.decode(e.encode()[:16] + bytes.fromhex("2026120A") + e.encode()[20:])
    log: tuple[LogEntry, ...] = ()
    for n in range(12):
        log = log_append(log, LogEntry(n, 1, 6, bytes(6), bytes.fromhex("20261206"), bytes(3)))
    assert len(log) == 10 and [x.counter for x in log] == list(range(11, 1, -1))  # newest is record 1


def test_personalise() -> None:
    img = personalise(KEYS, CARD_NO, 5000, Category.STUDENT, 330100, date(2026, 1, 1), date(2031, 12, 31))
    assert img.keys == KEYS.for_card(CARD_NO) and img.card_no == CARD_NO and img.balance_fen == 5000
    assert img.issuer == issuer_data() and img.issuer.status == AppStatus.ACTIVE
    assert img.holder == HolderData(Category.STUDENT) and img.transit == TransitRecord() and img.log == ()
    assert (img.offline_counter, img.online_counter) == (0, 0)
    with pytest.raises(ValueError, match="balance_fen"):
        personalise(KEYS, CARD_NO, -1, 0, 330100, date(2026, 1, 1), date(2031, 12, 31))
