"""The terminal's side of the city-pass APDUs (docs/card.md), sans-I/O: command builders and
parsers of the card's answers. A parser raises ``CardAnswerError`` naming what was wrong, for
an answer of the wrong length or a status word other than the one expected.
"""

from dataclasses import dataclass

from ..errors import CityCardError
from .apdu import Command, Response, describe, parse_response

CLA = 0x80
PURCHASE_KEY_INDEX = 0x01
LOAD_KEY_INDEX = 0x01
SFI_ISSUER, SFI_HOLDER, SFI_CAPP, SFI_LOG = 0x15, 0x16, 0x17, 0x18
TRANSIT_RECORD = 1  # record 1 of the compound (CAPP) file
PROOF_PURCHASE, PROOF_CAPP, PROOF_LOAD = 0x06, 0x09, 0x02


class CardAnswerError(CityCardError):
    """The card answered something the terminal cannot use: the sale stops, nothing is kept."""

    def __init__(self, what: str, sw: int | None = None) -> None:
        super().__init__(what if sw is None else f"{what}: card answered {sw:04X} ({describe(sw)})")
        self.sw = sw


def ok_data(raw: bytes, what: str, length: int | None = None) -> bytes:
    """The data of a 9000 answer, of ``length`` bytes if given."""
    try:
        r: Response = parse_response(raw)
    except ValueError as exc:  # ApduError is a ValueError
        raise CardAnswerError(f"{what}: malformed answer ({exc})") from None
    if r.sw != 0x9000:
        raise CardAnswerError(what, r.sw)
    if length is not None and len(r.data) != length:
        raise CardAnswerError(f"{what}: {len(r.data)} bytes of data, expected {length}")
    return r.data


def ok_or_sw(raw: bytes) -> int | None:
    """None for 9000, else the status word (for answers where a refusal is an outcome)."""
    try:
        sw = parse_response(raw).sw
    except ValueError as exc:
        raise CardAnswerError(f"malformed answer ({exc})") from None
    return None if sw == 0x9000 else sw


# -- commands ----------------------------------------------------------------------------------
def get_balance() -> Command:
    return Command(CLA, 0x5C, 0x00, 0x02, le=4)


def read_binary_sfi(sfi: int, offset: int = 0, le: int = 256) -> Command:
    return Command(0x00, 0xB0, 0x80 | sfi, offset, le=le)


def read_record_sfi(sfi: int, record: int, le: int = 256) -> Command:
    return Command(0x00, 0xB2, record, (sfi << 3) | 4, le=le)


def init_purchase(amount_fen: int, terminal_id6: bytes, compound: bool) -> Command:
    data = bytes([PURCHASE_KEY_INDEX]) + amount_fen.to_bytes(4, "big") + terminal_id6
    return Command(CLA, 0x50, 0x03 if compound else 0x01, 0x02, data, le=15)


def update_capp_cache(record_no: int, sfi: int, record: bytes) -> Command:
    return Command(CLA, 0xDC, record_no, sfi << 3, record)


def debit(terminal_seq: int, when_bcd7: bytes, mac1: bytes) -> Command:
    return Command(CLA, 0x54, 0x01, 0x00, terminal_seq.to_bytes(4, "big") + when_bcd7 + mac1, le=8)


def transaction_proof(counter: int, transaction_type: int) -> Command:
    return Command(CLA, 0x5A, 0x00, transaction_type, counter.to_bytes(2, "big"), le=8)


def init_load(amount_fen: int, terminal_id6: bytes) -> Command:
    data = bytes([LOAD_KEY_INDEX]) + amount_fen.to_bytes(4, "big") + terminal_id6
    return Command(CLA, 0x50, 0x00, 0x02, data, le=16)


def credit_load(when_bcd7: bytes, mac2: bytes) -> Command:
    return Command(CLA, 0x52, 0x00, 0x00, when_bcd7 + mac2, le=4)


# -- answers -----------------------------------------------------------------------------------
def parse_balance(raw: bytes) -> int:
    return int.from_bytes(ok_data(raw, "GET BALANCE", 4), "big")


@dataclass(frozen=True, slots=True)
class PurchaseInit:
    """INITIALIZE FOR (CAPP) PURCHASE's answer."""

    balance_fen: int
    offline_counter: int
    overdraft_fen: int
    key_version: int
    algorithm: int
    card_random: bytes


def parse_init_purchase(raw: bytes) -> PurchaseInit:
    d = ok_data(raw, "INITIALIZE FOR PURCHASE", 15)
    return PurchaseInit(int.from_bytes(d[0:4], "big"), int.from_bytes(d[4:6], "big"),
                        int.from_bytes(d[6:9], "big"), d[9], d[10], bytes(d[11:15]))


@dataclass(frozen=True, slots=True)
class DebitAnswer:
    tac: bytes
    mac2: bytes


def parse_debit(raw: bytes) -> DebitAnswer:
    d = ok_data(raw, "DEBIT FOR PURCHASE", 8)
    return DebitAnswer(bytes(d[0:4]), bytes(d[4:8]))


def parse_proof(raw: bytes) -> DebitAnswer | None:
    """GET TRANSACTION PROOF: (TAC, MAC2) of that purchase, or None when the card says it never
    happened (9406)."""
    try:
        r = parse_response(raw)
    except ValueError as exc:
        raise CardAnswerError(f"GET TRANSACTION PROOF: malformed answer ({exc})") from None
    if r.sw == 0x9406:
        return None
    d = ok_data(raw, "GET TRANSACTION PROOF", 8)
    return DebitAnswer(bytes(d[4:8]), bytes(d[0:4]))  # the card answers MAC2 || TAC here


@dataclass(frozen=True, slots=True)
class LoadInit:
    """INITIALIZE FOR LOAD's answer: what the host needs to check MAC1 and make MAC2."""

    balance_fen: int
    online_counter: int
    key_version: int
    algorithm: int
    card_random: bytes
    mac1: bytes


def parse_init_load(raw: bytes) -> LoadInit:
    d = ok_data(raw, "INITIALIZE FOR LOAD", 16)
    return LoadInit(int.from_bytes(d[0:4], "big"), int.from_bytes(d[4:6], "big"), d[6], d[7], bytes(d[8:12]),
                    bytes(d[12:16]))


def parse_credit(raw: bytes) -> bytes:
    """CREDIT FOR LOAD: the load's TAC."""
    return bytes(ok_data(raw, "CREDIT FOR LOAD", 4))
