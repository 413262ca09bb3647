"""A terminal with its SAM, and the issuer's host, driving a city-pass card through any
``transmit(apdu bytes) -> response bytes``: the pure card's ``answer`` in unit tests, pyscard's
connection in integration tests. It computes what a SAM and a host would (MAC1 of a purchase,
MAC2 of a load) from the issuer's master keys, and checks what the card proves back."""

from collections.abc import Callable
from dataclasses import dataclass

from citycard.domain.epurse_crypto import (
    COMPOUND_PURCHASE,
    LOAD_EP,
    PURCHASE_EP,
    LoadInput,
    PurchaseInput,
    When,
    load_mac1,
    load_mac2,
    load_session_key,
    load_tac,
    purchase_mac1,
    purchase_mac2,
    purchase_session_key,
    purchase_tac,
)
from citycard.domain.offline import IssuerKeys
from citycard.protocols.apdu import Command, Response, parse_response, select_by_aid
from citycard.protocols.card_files import SFI_CAPP, TransitRecord
from citycard.protocols.epurse_card import CITY_PASS_AID

DEMO_KEYS = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                              "F0E0D0C0B0A090807060504030201000")  # config/default.toml [card]
TERMINAL_ID = bytes.fromhex("000000001001")
WHEN = When.of("20261206", "081500")

Transmit = Callable[[bytes], bytes]


def apdu_init(p1: int, key_index: int, amount_fen: int, terminal_id: bytes, le: int) -> bytes:
    return Command(0x80, 0x50, p1, 0x02, bytes([key_index]) + amount_fen.to_bytes(4, "big") + terminal_id,
                   le=le).encode()


def apdu_debit(seq: int, when: When, mac1: bytes) -> bytes:
    return Command(0x80, 0x54, 0x01, 0x00, seq.to_bytes(4, "big") + when.bcd() + mac1, le=8).encode()


def apdu_update_capp(record: TransitRecord) -> bytes:
    return Command(0x80, 0xDC, 0x01, SFI_CAPP << 3, record.encode()).encode()


def apdu_credit(when: When, mac2: bytes) -> bytes:
    return Command(0x80, 0x52, 0x00, 0x00, when.bcd() + mac2, le=4).encode()


def apdu_proof(transaction_type: int, counter: int) -> bytes:
    return Command(0x80, 0x5A, 0x00, transaction_type, counter.to_bytes(2, "big"),
                   le=4 if transaction_type == LOAD_EP else 8).encode()


@dataclass
class Purchase:
    """One purchase as the terminal saw it: what the issuer checks later."""

    p: PurchaseInput
    mac2: bytes
    tac: bytes
    balance_before_fen: int
    sw: int  # of the DEBIT


@dataclass
class CardTerminal:
    transmit: Transmit
    card_no: int
    keys: IssuerKeys = DEMO_KEYS
    terminal_id: bytes = TERMINAL_ID

    def send(self, apdu: bytes) -> Response:
        return parse_response(self.transmit(apdu))

    def select(self) -> Response:
        return self.send(select_by_aid(CITY_PASS_AID).encode())

    def balance(self) -> int:
        return int.from_bytes(self.send(bytes.fromhex("805C000204")).check(), "big")

    def purchase(self, amount_fen: int, seq: int, when: When = WHEN, *,
                 transit: TransitRecord | None = None, compound: bool = False,
                 mac1_bit_flip: bool = False) -> Purchase:
        """INITIALIZE, (UPDATE CAPP DATA CACHE,) DEBIT; MAC2 and TAC checked when the DEBIT is OK.
        The DEBIT's transmit may raise (a torn answer): the caller sees the exception."""
        compound = compound or transit is not None
        init = self.send(apdu_init(0x03 if compound else 0x01, 0x01, amount_fen, self.terminal_id, 15)).check()
        balance_before, counter, card_random = int.from_bytes(init[0:4], "big"), int.from_bytes(init[4:6], "big"), init[11:15]
        p = PurchaseInput(amount_fen, self.terminal_id, seq, when, card_random, counter,
                          COMPOUND_PURCHASE if compound else PURCHASE_EP)
        sespk = purchase_session_key(self.keys.for_card(self.card_no).dpk, card_random, counter, seq)
        mac1 = purchase_mac1(sespk, p)
        if mac1_bit_flip:
            mac1 = bytes([mac1[0] ^ 1]) + mac1[1:]
        if transit is not None:
            self.send(apdu_update_capp(transit)).check()
        r = self.send(apdu_debit(seq, when, mac1))
        if not r.ok:
            return Purchase(p, b"", b"", balance_before, r.sw)
        tac, mac2 = r.data[:4], r.data[4:]
        assert mac2 == purchase_mac2(sespk, amount_fen), "MAC2: the SAM does not accept the card's debit"
        assert tac == purchase_tac(self.keys.dtk(self.card_no), p), "TAC: the issuer would reject it"
        return Purchase(p, mac2, tac, balance_before, r.sw)

    def expected_proof(self, p: PurchaseInput) -> tuple[bytes, bytes]:
        """(MAC2, TAC) of a purchase, from the master keys: what GET TRANSACTION PROOF owes."""
        sespk = purchase_session_key(self.keys.for_card(self.card_no).dpk, p.card_random, p.offline_counter,
                                     p.terminal_seq)
        return purchase_mac2(sespk, p.amount_fen), purchase_tac(self.keys.dtk(self.card_no), p)

    def load(self, amount_fen: int, when: When = WHEN) -> tuple[LoadInput, bytes]:
        """The host's load: INITIALIZE FOR LOAD (MAC1 checked), CREDIT FOR LOAD; (the load, TAC)."""
        init = self.send(apdu_init(0x00, 0x01, amount_fen, self.terminal_id, 16)).check()
        balance_before, counter, card_random = int.from_bytes(init[0:4], "big"), int.from_bytes(init[4:6], "big"), init[8:12]
        ld = LoadInput(amount_fen, balance_before, self.terminal_id, when, card_random, counter)
        seslk = load_session_key(self.keys.for_card(self.card_no).dlk, card_random, counter)
        assert init[12:16] == load_mac1(seslk, ld), "load MAC1: the host does not accept the card"
        tac = self.send(apdu_credit(when, load_mac2(seslk, ld))).check()
        assert tac == load_tac(self.keys.dtk(self.card_no), ld)
        return ld, tac
