"""ISO 7816-4 APDUs (sans-I/O): command framing in cases 1 to 4, short and extended; response
APDUs; status words; and the follow-ups a T=0 card asks for (61xx, 6Cxx). See docs/card.md.

``Command.le`` is Ne, the number of bytes expected back (1..65536), not the Le byte: Ne 256
is the short Le byte 00, Ne 65536 the extended Le 0000. ``None`` means no Le field.
"""

from dataclasses import dataclass, replace
from enum import IntEnum

MAX_DATA_BYTES = 65535  # an extended Lc is two bytes, and 0 means no data
MAX_LE_BYTES = 65536  # an extended Le 0000
SHORT_MAX_DATA_BYTES = 255
SHORT_MAX_LE_BYTES = 256
HEADER_BYTES = 4  # CLA INS P1 P2
MAX_FOLLOW_UPS = 32  # GET RESPONSE rounds before a card is taken to be looping


class ApduError(ValueError):
    """A malformed APDU, or an argument no APDU can carry; the message names the fault."""


class StatusError(ApduError):
    """The card answered with a status word other than 9000: ``sw`` says which."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"card answered {sw:04X}: {describe(sw)}")
        self.sw = sw


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ApduError(f"{name} must be one byte (0..255), got {value}")


@dataclass(frozen=True, slots=True)
class Command:
    """A command APDU. ``extended`` forces extended length fields when short ones would fit
    (it is set on its own when they would not, and by ``parse_command`` when it saw them)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None
    extended: bool = False

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            _check_byte(name.upper(), getattr(self, name))
        if self.cla == 0xFF:
            raise ApduError("CLA FF is reserved for PPS (ISO 7816-3)")
        if self.ins & 0xF0 in (0x60, 0x90):
            raise ApduError(f"INS {self.ins:02X} is invalid: 6X and 9X are T=0 procedure bytes")
        if len(self.data) > MAX_DATA_BYTES:
            raise ApduError(f"data of {len(self.data)} bytes exceeds {MAX_DATA_BYTES}")
        if self.le is not None and not 1 <= self.le <= MAX_LE_BYTES:
            raise ApduError(f"Le (expected bytes) must be 1..{MAX_LE_BYTES}, got {self.le}")
        needs_extended = len(self.data) > SHORT_MAX_DATA_BYTES or (self.le or 0) > SHORT_MAX_LE_BYTES
        if needs_extended:
            object.__setattr__(self, "extended", True)
        elif self.extended and not self.data and self.le is None:
            raise ApduError("a case 1 command has no length field to extend")

    @property
    def case(self) -> int:
        """ISO 7816-3 case: 1 no data no Le, 2 Le only, 3 data only, 4 both."""
        return 1 + (self.le is not None) + 2 * bool(self.data)

    def encode(self) -> bytes:
        out = bytearray((self.cla, self.ins, self.p1, self.p2))
        if self.extended:
            out.append(0)  # the marker of extended lengths, once, before Lc or Le
            if self.data:
                out += len(self.data).to_bytes(2, "big") + self.data
            if self.le is not None:
                out += (self.le % MAX_LE_BYTES).to_bytes(2, "big")  # 65536 is 0000
        else:
            if self.data:
                out.append(len(self.data))
                out += self.data
            if self.le is not None:
                out.append(self.le % SHORT_MAX_LE_BYTES)  # 256 is 00
        return bytes(out)


def _ne(raw: bytes, zero_means: int) -> int:
    return int.from_bytes(raw, "big") or zero_means


def parse_command(raw: bytes) -> Command:
    """The command in ``raw``; ``ApduError`` names what is wrong with a malformed one."""
    n = len(raw)
    if n < HEADER_BYTES:
        raise ApduError(f"command of {n} bytes is shorter than its 4-byte header")
    cla, ins, p1, p2 = raw[:HEADER_BYTES]
    body = raw[HEADER_BYTES:]

    def make(data: bytes = b"", le: int | None = None, extended: bool = False) -> Command:
        return Command(cla, ins, p1, p2, data, le, extended)

    if not body:
        return make()
    if len(body) == 1:
        return make(le=_ne(body, SHORT_MAX_LE_BYTES))
    if body[0] != 0:  # short Lc
        lc = body[0]
        if len(body) == 1 + lc:
            return make(body[1:])
        if len(body) == 2 + lc:
            return make(body[1:-1], _ne(body[-1:], SHORT_MAX_LE_BYTES))
        raise ApduError(f"short Lc {lc} does not match the {len(body) - 1} bytes after it")
    if len(body) < 3:
        raise ApduError("extended length field truncated: 00 must be followed by two bytes")
    if len(body) == 3:
        return make(le=_ne(body[1:], MAX_LE_BYTES), extended=True)
    lc = int.from_bytes(body[1:3], "big")
    if lc == 0:
        raise ApduError("extended Lc of 0 followed by more bytes")
    rest = len(body) - 3
    if rest == lc:
        return make(body[3:], extended=True)
    if rest == lc + 2:
        return make(body[3:-2], _ne(body[-2:], MAX_LE_BYTES), True)
    raise ApduError(f"extended Lc {lc} does not match the {rest} bytes after it")


@dataclass(frozen=True, slots=True)
class Response:
    """A response APDU: the data, then SW1 SW2."""

    data: bytes
    sw: int

    def __post_init__(self) -> None:
        if not 0 <= self.sw <= 0xFFFF:
            raise ApduError(f"status word must be two bytes, got {self.sw}")

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    @property
    def ok(self) -> bool:
        return self.sw == StatusWord.OK

    def encode(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    def check(self) -> bytes:
        """The data if the card said 9000, else ``StatusError`` naming the word."""
        if not self.ok:
            raise StatusError(self.sw)
        return self.data


def parse_response(raw: bytes) -> Response:
    if len(raw) < 2:
        raise ApduError(f"response of {len(raw)} bytes has no status word (needs 2)")
    return Response(raw[:-2], int.from_bytes(raw[-2:], "big"))


class StatusWord(IntEnum):
    """Status words the platform knows. The three families carry a count in their low bits:
    their member here is the family's base (see ``describe``)."""

    OK = 0x9000
    MORE_DATA = 0x6100  # 61xx: xx bytes wait for GET RESPONSE
    WRONG_LE = 0x6C00  # 6Cxx: resend with Le = xx
    VERIFY_FAILED = 0x63C0  # 63Cx: x tries left
    DATA_MAY_BE_CORRUPTED = 0x6281
    END_OF_FILE = 0x6282
    FILE_INVALIDATED = 0x6283
    WRONG_LENGTH = 0x6700
    COMMAND_INCOMPATIBLE_WITH_FILE = 0x6981
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_INVALIDATED = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    SM_DATA_INCORRECT = 0x6988
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCE_DATA_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00
    MAC_INVALID = 0x9302  # PBOC
    APPLICATION_LOCKED = 0x9303  # PBOC
    INSUFFICIENT_BALANCE = 0x9401  # PBOC
    KEY_INDEX_NOT_SUPPORTED = 0x9403  # PBOC
    REQUIRED_MAC_UNAVAILABLE = 0x9406  # PBOC

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS: dict[StatusWord, str] = {
    StatusWord.OK: "OK",
    StatusWord.MORE_DATA: "more data available (GET RESPONSE)",
    StatusWord.WRONG_LE: "wrong Le (resend with the exact length)",
    StatusWord.VERIFY_FAILED: "verify failed",
    StatusWord.DATA_MAY_BE_CORRUPTED: "part of the returned data may be corrupted",
    StatusWord.END_OF_FILE: "end of file or record reached before Le bytes",
    StatusWord.FILE_INVALIDATED: "selected file invalidated",
    StatusWord.WRONG_LENGTH: "wrong length",
    StatusWord.COMMAND_INCOMPATIBLE_WITH_FILE: "command incompatible with file structure",
    StatusWord.SECURITY_STATUS_NOT_SATISFIED: "security status not satisfied",
    StatusWord.AUTH_METHOD_BLOCKED: "authentication method blocked",
    StatusWord.REFERENCE_DATA_INVALIDATED: "reference data invalidated",
    StatusWord.CONDITIONS_NOT_SATISFIED: "conditions of use not satisfied",
    StatusWord.COMMAND_NOT_ALLOWED: "command not allowed (no current EF)",
    StatusWord.SM_DATA_INCORRECT: "secure messaging data objects incorrect",
    StatusWord.WRONG_DATA: "incorrect parameters in the data field",
    StatusWord.FUNCTION_NOT_SUPPORTED: "function not supported",
    StatusWord.FILE_NOT_FOUND: "file not found",
    StatusWord.RECORD_NOT_FOUND: "record not found",
    StatusWord.NOT_ENOUGH_MEMORY: "not enough memory space in the file",
    StatusWord.INCORRECT_P1P2: "incorrect P1P2",
    StatusWord.REFERENCE_DATA_NOT_FOUND: "referenced data not found",
    StatusWord.WRONG_P1P2: "wrong parameters P1P2",
    StatusWord.INS_NOT_SUPPORTED: "INS not supported",
    StatusWord.CLA_NOT_SUPPORTED: "CLA not supported",
    StatusWord.NO_PRECISE_DIAGNOSIS: "no precise diagnosis",
    StatusWord.MAC_INVALID: "MAC invalid (PBOC)",
    StatusWord.APPLICATION_LOCKED: "application locked (PBOC)",
    StatusWord.INSUFFICIENT_BALANCE: "insufficient balance (PBOC)",
    StatusWord.KEY_INDEX_NOT_SUPPORTED: "key index not supported (PBOC)",
    StatusWord.REQUIRED_MAC_UNAVAILABLE: "required MAC unavailable (PBOC)",
}


def describe(sw: int) -> str:
    """A short human meaning of any status word; never raises."""
    if not 0 <= sw <= 0xFFFF:
        return f"not a status word: {sw}"
    if sw >> 8 == 0x61:
        return f"more data: {(sw & 0xFF) or 256} bytes available"
    if sw >> 8 == 0x6C:
        return f"wrong Le: exact length is {(sw & 0xFF) or 256}"
    if sw & 0xFFF0 == StatusWord.VERIFY_FAILED:
        return f"verify failed: {sw & 0x0F} tries left"
    try:
        return StatusWord(sw).meaning
    except ValueError:
        return f"unknown status word 0x{sw:04X}"


# -- follow-ups: what a T=0 card asks the terminal to send next ---------------------------
def follow_up(command: Command, response: Response) -> Command | None:
    """The command to send after ``response`` to ``command``: GET RESPONSE on 61xx, the same
    command with Le = xx on 6Cxx, else ``None`` (the response is final)."""
    sw1, sw2 = response.sw1, response.sw2
    if sw1 == 0x61:
        return get_response(sw2 or SHORT_MAX_LE_BYTES)
    if sw1 == 0x6C:
        return replace(command, le=sw2 or SHORT_MAX_LE_BYTES)
    return None


class Exchange:
    """One command to the end of its follow-ups: send ``command``, ``receive`` each answer,
    send what it returns while that is a ``Command``; the ``Response`` it returns at last has
    the data of every GET RESPONSE round joined. A card that keeps asking is an error."""

    __slots__ = ("_data", "_rounds", "command")

    def __init__(self, command: Command) -> None:
        self.command = command  # the one to send now
        self._data = bytearray()
        self._rounds = 0

    def receive(self, response: Response) -> Command | Response:
        nxt = follow_up(self.command, response)
        if nxt is None:
            return Response(bytes(self._data) + response.data, response.sw)
        self._rounds += 1
        if self._rounds > MAX_FOLLOW_UPS:
            raise ApduError(f"card still asks for follow-ups after {MAX_FOLLOW_UPS} rounds")
        if response.sw1 == 0x61:
            self._data += response.data  # 61xx may come with a first part of the data
        self.command = nxt
        return nxt


# -- the commands the card application sends -----------------------------------------------
CLA_ISO = 0x00
CLA_PBOC = 0x80  # proprietary class of the PBOC e-purse commands
BALANCE_BYTES = 4  # a PBOC balance: unsigned big-endian, in fen
P2_ELECTRONIC_DEPOSIT = 0x01  # PBOC ED
P2_ELECTRONIC_PURSE = 0x02  # PBOC EP


def _check_sfi(sfi: int) -> None:
    if not 1 <= sfi <= 30:
        raise ApduError(f"SFI must be 1..30, got {sfi}")


def select_by_aid(aid: bytes) -> Command:
    """SELECT by DF name (AID or the PSE name), first occurrence, asking for the FCI."""
    if not 1 <= len(aid) <= 16:
        raise ApduError(f"AID must be 1..16 bytes, got {len(aid)}")
    return Command(CLA_ISO, 0xA4, 0x04, 0x00, aid, le=SHORT_MAX_LE_BYTES)


def select_by_file_id(file_id: int) -> Command:
    """SELECT by a two-byte file identifier (3F00 is the MF), asking for the FCI."""
    if not 0 <= file_id <= 0xFFFF:
        raise ApduError(f"file id must be two bytes, got {file_id}")
    return Command(CLA_ISO, 0xA4, 0x00, 0x00, file_id.to_bytes(2, "big"), le=SHORT_MAX_LE_BYTES)


def read_binary(offset: int = 0, *, sfi: int | None = None,
                le: int = SHORT_MAX_LE_BYTES) -> Command:
    """READ BINARY of the current EF (offset 0..32767), or of the EF ``sfi`` (offset 0..255)."""
    if sfi is None:
        if not 0 <= offset <= 0x7FFF:
            raise ApduError(f"offset must be 0..32767, got {offset}")
        return Command(CLA_ISO, 0xB0, offset >> 8, offset & 0xFF, le=le)
    _check_sfi(sfi)
    if not 0 <= offset <= 0xFF:
        raise ApduError(f"offset with an SFI must be 0..255, got {offset}")
    return Command(CLA_ISO, 0xB0, 0x80 | sfi, offset, le=le)


def read_record(record: int, *, sfi: int | None = None,
                le: int = SHORT_MAX_LE_BYTES) -> Command:
    """READ RECORD number ``record`` (1..254) of the EF ``sfi``, or of the current EF."""
    if not 1 <= record <= 0xFE:
        raise ApduError(f"record number must be 1..254, got {record}")
    if sfi is not None:
        _check_sfi(sfi)
    p2 = ((sfi or 0) << 3) | 0x04  # 100: P1 is a record number
    return Command(CLA_ISO, 0xB2, record, p2, le=le)


def get_response(length: int) -> Command:
    """GET RESPONSE for ``length`` bytes (1..256; 256 is the Le byte 00)."""
    if not 1 <= length <= SHORT_MAX_LE_BYTES:
        raise ApduError(f"GET RESPONSE length must be 1..256, got {length}")
    return Command(CLA_ISO, 0xC0, 0x00, 0x00, le=length)


def get_balance(p2: int = P2_ELECTRONIC_PURSE) -> Command:
    """PBOC GET BALANCE of the e-purse (P2 02) or the e-deposit (P2 01): 4 bytes back."""
    if p2 not in (P2_ELECTRONIC_DEPOSIT, P2_ELECTRONIC_PURSE):
        raise ApduError(f"GET BALANCE P2 must be 01 (ED) or 02 (EP), got {p2:02X}")
    return Command(CLA_PBOC, 0x5C, 0x00, p2, le=BALANCE_BYTES)


def get_challenge(length: int = 4) -> Command:
    """GET CHALLENGE: ``length`` random bytes from the card (PBOC cards give 4 or 8)."""
    if not 1 <= length <= SHORT_MAX_LE_BYTES:
        raise ApduError(f"challenge length must be 1..256, got {length}")
    return Command(CLA_ISO, 0x84, 0x00, 0x00, le=length)
