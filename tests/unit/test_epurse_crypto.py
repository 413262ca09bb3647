"""The e-purse crypto core (citycard/domain/epurse_crypto.py) against published worked examples,
self-generated regression vectors, and a whole purchase between a card and a SAM."""

import pytest

from citycard.domain.epurse_crypto import (
    COMPOUND_PURCHASE,
    LOAD_ED,
    LOAD_EP,
    LoadInput,
    PurchaseInput,
    When,
    decrypt_block,
    diversification_factor,
    diversify,
    encrypt_block,
    load_mac1,
    load_mac2,
    load_session_key,
    mac,
    mac4,
    pad,
    purchase_mac1,
    purchase_mac2,
    purchase_session_key,
    purchase_tac,
    same_mac,
    tac_key,
)

H = bytes.fromhex


# -- published worked examples ------------------------------------------------------------
# "基于PBOC电子钱包的消费过程详解" (PBOC e-purse purchase, step by step),
# https://cnblogs.com/ttss/p/4280430.html (the same text at blog.csdn.net/slj_win/article/details/42240845):
# purchase key 1122..2211, card random 11223344, offline counter 0000, terminal seq ..0001.
PURCHASE_KEY = H("11223344556677888877665544332211")


def test_published_purchase_session_key_mac1_mac2() -> None:
    sespk = purchase_session_key(PURCHASE_KEY, H("11223344"), 0, 1)
    assert sespk == H("003238ABC57659DD")
    p = PurchaseInput(amount_fen=0x1000, terminal_id=H("001122334455"), terminal_seq=1,
                      when=When.of("20120229", "135100"), card_random=H("11223344"),
                      offline_counter=0)
    assert purchase_mac1(sespk, p) == H("F15CAB75")
    assert purchase_mac2(sespk, 0x1000) == H("56988A13")


# "基于PBOC的电子钱包的圈存过程" (PBOC e-purse load, step by step),
# http://www.ncuisine.com/xingyexinwen/379.html: load key 1122..2211, card random 11223344,
# online counter 0000, transaction type 01 (the example loads an ED; the formula is the EP's).
def test_published_load_session_key_mac1_mac2() -> None:
    seslk = load_session_key(PURCHASE_KEY, H("11223344"), 0)
    assert seslk == H("9B1D924E05595603")
    ld = LoadInput(amount_fen=0x1000, balance_before_fen=0, terminal_id=H("001122334455"),
                   when=When.of("20111221", "214822"), card_random=H("11223344"),
                   online_counter=0, transaction_type=LOAD_ED)
    assert load_mac1(seslk, ld) == H("2988AE5A")
    assert load_mac2(seslk, ld) == H("3A845BF0")


# ISO 9797-1 MAC algorithm 3 with padding method 2 and a zero IV: the worked example of
# ICAO Doc 9303 Part 11, Appendix D.4 (secure messaging, "compute MAC over N with KSmac").
def test_published_retail_mac_icao_9303() -> None:
    ks_mac = H("F1CB1F1FB5ADF208806B89DC579DC1F8")
    n = H("887022120C06C2270CA4020C800000008709016375432908C044F6")
    assert mac(ks_mac, n) == H("BF8B92D635FF24F8")


# -- self-generated regression vectors ----------------------------------------------------
# No published example with hex values was found for diversification or the TAC: these values
# were computed by this module (and by an independent throwaway script using the same
# cipher) and pin the formulas against accidental change; they prove nothing about the standard.
ISSUER_MK = H("0123456789ABCDEFFEDCBA9876543210")
SERIAL = H("31000000000000012345")  # a 10-byte application serial number


def test_regression_vector_diversification() -> None:
    factor = diversification_factor(SERIAL)
    assert factor == H("0000000000012345")
    assert diversify(ISSUER_MK, factor) == H("6D2C89DB3B920683BB54E9FE2141ACD6")


def test_regression_vector_tac() -> None:
    dtk = H("00112233445566778899AABBCCDDEEFF")
    assert tac_key(dtk) == H("8888888888888888")
    p = PurchaseInput(amount_fen=0x1000, terminal_id=H("001122334455"), terminal_seq=1,
                      when=When.of("20120229", "135100"), card_random=H("11223344"),
                      offline_counter=0)
    assert purchase_tac(dtk, p) == H("B3A0D49C")


def test_regression_vector_retail_mac_of_nothing() -> None:
    assert mac(ISSUER_MK, b"") == H("F1FBCF2A56D19BA7")


# -- building blocks ----------------------------------------------------------------------
@pytest.mark.parametrize(("data", "padded"), [
    ("", "8000000000000000"),
    ("01", "0180000000000000"),
    ("01020304050607", "0102030405060780"),
    ("0102030405060708", "01020304050607088000000000000000"),
])
def test_padding_is_iso9797_method_2(data: str, padded: str) -> None:
    assert pad(H(data)) == H(padded)


def test_single_des_is_3des_with_equal_halves() -> None:
    k = H("133457799BBCDFF1")
    block = H("0123456789ABCDEF")
    assert encrypt_block(k, block) == H("85E813540F0AB405")  # J. Orlin Grabbe, "The DES Algorithm Illustrated"
    assert encrypt_block(k + k, block) == encrypt_block(k, block)
    assert decrypt_block(k, encrypt_block(k, block)) == block


def test_mac4_is_the_left_half_and_iv_matters() -> None:
    key = H("003238ABC57659DD")
    assert mac4(key, b"x") == mac(key, b"x")[:4]
    assert mac(key, b"x", iv=H("1122334400000000")) != mac(key, b"x")


def test_diversification_is_deterministic_and_per_card() -> None:
    a = diversify(ISSUER_MK, diversification_factor(SERIAL))
    assert a == diversify(ISSUER_MK, diversification_factor(SERIAL))
    b = diversify(ISSUER_MK, diversification_factor(H("31000000000000012346")))
    assert a != b
    assert diversify(H("00" * 16), diversification_factor(SERIAL)) != a


# -- a whole purchase: card, SAM, issuer --------------------------------------------------
MPK = H("404142434445464748494A4B4C4D4E4F")  # issuer master purchase key (the SAM holds it)
MTK = H("505152535455565758595A5B5C5D5E5F")  # issuer master TAC key


class Card:
    """The card's side: it holds only its own diversified keys."""

    def __init__(self, serial: bytes, balance_fen: int) -> None:
        factor = diversification_factor(serial)
        self.serial = serial
        self.dpk = diversify(MPK, factor)
        self.dtk = diversify(MTK, factor)
        self.balance_fen = balance_fen
        self.offline_counter = 7

    def debit(self, p: PurchaseInput, mac1: bytes) -> tuple[bytes, bytes] | None:
        sespk = purchase_session_key(self.dpk, p.card_random, p.offline_counter, p.terminal_seq)
        if not same_mac(mac1, purchase_mac1(sespk, p)):
            return None
        self.balance_fen -= p.amount_fen
        self.offline_counter += 1
        return purchase_mac2(sespk, p.amount_fen), purchase_tac(self.dtk, p)


def sam_session_key(serial: bytes, p: PurchaseInput) -> bytes:
    """The SAM's side: it derives the card's key from the master key and the card's serial."""
    dpk = diversify(MPK, diversification_factor(serial))
    return purchase_session_key(dpk, p.card_random, p.offline_counter, p.terminal_seq)


def issuer_checks_tac(serial: bytes, p: PurchaseInput, tac: bytes) -> bool:
    return same_mac(tac, purchase_tac(diversify(MTK, diversification_factor(serial)), p))


def _purchase(card: Card, **changes: object) -> PurchaseInput:
    fields: dict[str, object] = dict(
        amount_fen=250, terminal_id=H("310000000042"), terminal_seq=0x00012345,
        when=When.of("20261206", "081500"), card_random=H("A1B2C3D4"),
        offline_counter=card.offline_counter, transaction_type=COMPOUND_PURCHASE)
    fields.update(changes)
    return PurchaseInput(**fields)  # type: ignore[arg-type]


def _completed(card: Card) -> tuple[PurchaseInput, bytes, bytes, bytes]:
    """A purchase the SAM started and the card accepted: (input, SESPK, MAC2, TAC)."""
    p = _purchase(card)
    sespk = sam_session_key(card.serial, p)
    answer = card.debit(p, purchase_mac1(sespk, p))
    assert answer is not None
    return p, sespk, *answer


def test_a_whole_purchase_verifies_on_every_side() -> None:
    card = Card(SERIAL, balance_fen=1000)
    p, sespk, mac2, tac = _completed(card)
    assert same_mac(mac2, purchase_mac2(sespk, p.amount_fen))  # the SAM believes the debit
    assert issuer_checks_tac(card.serial, p, tac)  # the issuer believes the transaction
    assert (card.balance_fen, card.offline_counter) == (750, 8)


@pytest.mark.parametrize("change", [
    {"amount_fen": 250 ^ 1},
    {"offline_counter": 7 ^ 1},
    {"terminal_id": H("310000000043")},
    {"terminal_seq": 0x00012345 ^ 1},
    {"when": When.of("20261206", "081501")},
    {"card_random": H("A1B2C3D5")},
], ids=["amount", "counter", "terminal id", "terminal seq", "time", "card random"])
def test_one_changed_bit_breaks_mac1(change: dict[str, object]) -> None:
    card = Card(SERIAL, balance_fen=1000)
    sent = _purchase(card)
    mac1 = purchase_mac1(sam_session_key(card.serial, sent), sent)
    assert card.debit(_purchase(card, **change), mac1) is None
    assert card.balance_fen == 1000


def test_one_changed_bit_breaks_mac2_and_tac() -> None:
    card = Card(SERIAL, balance_fen=1000)
    p, sespk, mac2, tac = _completed(card)
    assert not same_mac(mac2, purchase_mac2(sespk, p.amount_fen ^ 1))
    for change in ({"amount_fen": 251}, {"terminal_id": H("310000000043")},
                   {"terminal_seq": 0x00012344}, {"when": When.of("20261207", "081500")}):
        assert not issuer_checks_tac(card.serial, _purchase(card, offline_counter=7, **change), tac)


def test_another_card_cannot_answer_for_this_one() -> None:
    card, other = Card(SERIAL, 1000), Card(H("31000000000000099999"), 1000)
    p = _purchase(card)
    assert other.debit(p, purchase_mac1(sam_session_key(card.serial, p), p)) is None


def test_load_macs_verify_between_card_and_host() -> None:
    dlk = diversify(H("606162636465666768696A6B6C6D6E6F"), diversification_factor(SERIAL))
    ld = LoadInput(amount_fen=5000, balance_before_fen=750, terminal_id=H("310000000042"),
                   when=When.of("20261206", "090000"), card_random=H("0BADCAFE"),
                   online_counter=3, transaction_type=LOAD_EP)
    card_key, host_key = (load_session_key(dlk, ld.card_random, ld.online_counter) for _ in range(2))
    assert same_mac(load_mac1(card_key, ld), load_mac1(host_key, ld))
    assert load_mac2(card_key, ld) == load_mac2(host_key, ld)
    bumped = load_session_key(dlk, ld.card_random, ld.online_counter + 1)
    assert load_mac1(bumped, ld) != load_mac1(card_key, ld)


# -- refusals -----------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "message"), [
    (lambda: purchase_session_key(H("00" * 8), H("11223344"), 0, 1), "purchase key DPK must be 16 bytes, got 8"),
    (lambda: purchase_session_key(PURCHASE_KEY, H("112233"), 0, 1), "card random must be 4 bytes, got 3"),
    (lambda: purchase_session_key(PURCHASE_KEY, H("11223344"), 0x10000, 1), "offline counter must be in 0..65535"),
    (lambda: load_session_key(PURCHASE_KEY, H("11223344"), -1), "online counter must be in 0..65535, got -1"),
    (lambda: diversify(H("00" * 8), H("00" * 8)), "master key must be 16 bytes, got 8"),
    (lambda: diversify(ISSUER_MK, H("00" * 7)), "diversification factor must be 8 bytes, got 7"),
    (lambda: diversification_factor(H("00" * 7)), "at least 8 bytes, got 7"),
    (lambda: mac(H("00" * 24), b""), "MAC key must be 8 or 16 bytes, got 24"),
    (lambda: mac(H("00" * 8), b"", iv=H("00")), "iv must be 8 bytes, got 1"),
    (lambda: purchase_mac1(PURCHASE_KEY, None), "SESPK must be 8 bytes, got 16"),  # type: ignore[arg-type]
    (lambda: purchase_mac2(H("00" * 8), 2**32), "amount_fen must be in 0..4294967295"),
    (lambda: When(H("20120230"), H("000000")), "not a calendar date"),
    (lambda: When(H("2012022A"), H("000000")), "date must be packed BCD"),
    (lambda: When(H("20120229"), H("240000")), "not a time of day"),
    (lambda: When(H("201202"), H("000000")), "date must be 4 bytes, got 3"),
    (lambda: When.of("2012-02-29", "000000"), "date must be 8 digits"),
])
def test_wrong_inputs_are_refused_clearly(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_purchase_input_is_validated() -> None:
    card = Card(SERIAL, 1000)
    for change, message in (
        ({"amount_fen": -1}, "amount_fen must be in 0..4294967295, got -1"),
        ({"amount_fen": 2**32}, "amount_fen must be in 0"),
        ({"amount_fen": True}, "amount_fen must be an int"),
        ({"terminal_id": H("3100000000")}, "terminal id must be 6 bytes, got 5"),
        ({"terminal_seq": 2**32}, "terminal seq must be in 0..4294967295"),
        ({"card_random": "A1B2C3D4"}, "card random must be bytes, not str"),
        ({"transaction_type": 0x02}, "purchase transaction type must be 06 or 09, got 02"),
        ({"transaction_type": "06"}, "purchase transaction type must be 06 or 09, got '06'"),
        ({"when": "20261206081500"}, "when must be a When"),
    ):
        with pytest.raises(ValueError, match=message):
            _purchase(card, **change)


def test_load_input_is_validated() -> None:
    with pytest.raises(ValueError, match="load transaction type must be 01 or 02, got 06"):
        LoadInput(1, 0, H("00" * 6), When.of("20260101", "000000"), H("00" * 4), 0, 0x06)
    with pytest.raises(ValueError, match="balance_before_fen must be in 0"):
        LoadInput(1, -5, H("00" * 6), When.of("20260101", "000000"), H("00" * 4), 0)


def test_inputs_are_frozen() -> None:
    w = When.of("20260101", "000000")
    with pytest.raises(AttributeError):
        w.date = H("20260102")  # type: ignore[misc]
