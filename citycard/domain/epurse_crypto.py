"""The e-purse's cryptography, per JR/T 0025 (PBOC 2.0) electronic deposit / electronic purse.

Pure: bytes in, bytes out; no clock, no randomness (the card random and the date come in as
arguments). DES and 3DES come from the ``cryptography`` package; no cipher is written here.
The formulas, and where each was checked, are in docs/card.md ("Keys and MACs").
"""

import hmac
from dataclasses import dataclass
from datetime import date as _date
from datetime import time as _time

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography >= 43 keeps 3DES among the "decrepit" algorithms
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

BLOCK = 8
MAX_AMOUNT_FEN = 2**32 - 1  # amounts travel as 4 bytes, big-endian

# transaction type identifiers (JR/T 0025 ED/EP)
LOAD_ED = 0x01
LOAD_EP = 0x02
PURCHASE_EP = 0x06
COMPOUND_PURCHASE = 0x09
PURCHASE_TYPES = frozenset({PURCHASE_EP, COMPOUND_PURCHASE})
LOAD_TYPES = frozenset({LOAD_ED, LOAD_EP})


# -- checks -------------------------------------------------------------------------------
def _need(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != length:
        raise ValueError(f"{name} must be {length} bytes, got {len(value)}")


def _need_int(name: str, value: int, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= top:
        raise ValueError(f"{name} must be in 0..{top}, got {value}")


def _need_key(name: str, key: bytes, lengths: tuple[int, ...] = (8, 16)) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) not in lengths:
        got = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"{name} must be {' or '.join(map(str, lengths))} bytes, got {got}")


# -- the block cipher -----------------------------------------------------------------------
def _tdes_key(key: bytes) -> bytes:
    """An 8-byte key as K1=K2=K3 (single DES); a 16-byte key as K1 K2 K1. Always 24 bytes,
    so ``cryptography`` never warns about two-key 3DES."""
    _need_key("key", key)
    return bytes(key) * 3 if len(key) == 8 else bytes(key) + bytes(key[:8])


def encrypt_block(key: bytes, block: bytes) -> bytes:
    """DES (8-byte key) or 3DES-EDE (16-byte key) of one 8-byte block, ECB."""
    _need("block", block, BLOCK)
    enc = Cipher(TripleDES(_tdes_key(key)), modes.ECB()).encryptor()
    return enc.update(bytes(block)) + enc.finalize()


def decrypt_block(key: bytes, block: bytes) -> bytes:
    _need("block", block, BLOCK)
    dec = Cipher(TripleDES(_tdes_key(key)), modes.ECB()).decryptor()
    return dec.update(bytes(block)) + dec.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


# -- padding and MACs -----------------------------------------------------------------------
def pad(data: bytes) -> bytes:
    """ISO 9797-1 padding method 2: 0x80, then 0x00 to a multiple of 8 (a whole block of
    80 00.. when the data is already a multiple of 8), as JR/T 0025 pads MAC input."""
    padded = bytes(data) + b"\x80"
    return padded + bytes(-len(padded) % BLOCK)


def mac(key: bytes, data: bytes, iv: bytes = bytes(BLOCK)) -> bytes:
    """The full 8-byte MAC of ``data`` (padded with :func:`pad`).

    An 8-byte key: single-DES CBC-MAC (the ED/EP transaction MAC, session keys are 8 bytes).
    A 16-byte key: ISO 9797-1 MAC algorithm 3 ("retail MAC"): DES-CBC with the left half,
    then the last block decrypted with the right half and encrypted with the left.
    ``iv`` is 8 zero bytes for the transaction MACs; secure messaging uses the card's
    challenge instead, so it is a parameter.
    """
    _need_key("MAC key", key)
    _need("iv", iv, BLOCK)
    left = bytes(key[:8])
    chain = bytes(iv)
    padded = pad(data)
    for i in range(0, len(padded), BLOCK):
        chain = encrypt_block(left, _xor(chain, padded[i : i + BLOCK]))
    if len(key) == 16:
        chain = encrypt_block(left, decrypt_block(bytes(key[8:]), chain))
    return chain


def mac4(key: bytes, data: bytes, iv: bytes = bytes(BLOCK)) -> bytes:
    """The 4 leftmost bytes of :func:`mac`: MAC1, MAC2 and the TAC are this long."""
    return mac(key, data, iv)[:4]


def same_mac(a: bytes, b: bytes) -> bool:
    """Compare MACs in constant time (a MAC check must not leak how many bytes matched)."""
    return hmac.compare_digest(bytes(a), bytes(b))


# -- keys ---------------------------------------------------------------------------------
def diversification_factor(serial: bytes) -> bytes:
    """The rightmost 8 bytes of the card's application serial number (packed BCD as stored
    on the card), the input to :func:`diversify`."""
    if not isinstance(serial, bytes | bytearray) or len(serial) < 8:
        got = len(serial) if isinstance(serial, bytes | bytearray) else type(serial).__name__
        raise ValueError(f"application serial number must be at least 8 bytes, got {got}")
    return bytes(serial[-8:])


def diversify(master_key: bytes, factor: bytes) -> bytes:
    """A card's 16-byte key from an issuer master key: 3DES(MK, factor) || 3DES(MK, ~factor).
    Each card gets its own keys, so one card's keys opened up reveal no other card's."""
    _need_key("master key", master_key, (16,))
    _need("diversification factor", factor, 8)
    complement = bytes(b ^ 0xFF for b in factor)
    return encrypt_block(master_key, bytes(factor)) + encrypt_block(master_key, complement)


def purchase_session_key(dpk: bytes, card_random: bytes, offline_counter: int,
                         terminal_seq: int) -> bytes:
    """SESPK = 3DES(DPK, card random (4) || offline counter (2) || terminal seq, low 2 bytes)."""
    _need_key("purchase key DPK", dpk, (16,))
    _need("card random", card_random, 4)
    _need_int("offline counter", offline_counter, 0xFFFF)
    _need_int("terminal seq", terminal_seq, 0xFFFFFFFF)
    data = bytes(card_random) + offline_counter.to_bytes(2, "big") + (terminal_seq & 0xFFFF).to_bytes(2, "big")
    return encrypt_block(dpk, data)


def load_session_key(dlk: bytes, card_random: bytes, online_counter: int) -> bytes:
    """SESLK = 3DES(DLK, card random (4) || online counter (2) || 80 00)."""
    _need_key("load key DLK", dlk, (16,))
    _need("card random", card_random, 4)
    _need_int("online counter", online_counter, 0xFFFF)
    return encrypt_block(dlk, bytes(card_random) + online_counter.to_bytes(2, "big") + b"\x80\x00")


def tac_key(dtk: bytes) -> bytes:
    """The TAC is a single-DES MAC under the card's TAC key's left half XOR its right half."""
    _need_key("TAC key DTK", dtk, (16,))
    return _xor(bytes(dtk[:8]), bytes(dtk[8:]))


# -- typed inputs -------------------------------------------------------------------------
def _bcd_digits(name: str, value: bytes) -> str:
    digits = value.hex()
    if not digits.isdigit():
        raise ValueError(f"{name} must be packed BCD, got {digits.upper()}")
    return digits


@dataclass(frozen=True, slots=True)
class When:
    """Transaction date (4 bytes BCD, YYYYMMDD) and time (3 bytes BCD, HHMMSS)."""

    date: bytes
    time: bytes

    def __post_init__(self) -> None:
        _need("date", self.date, 4)
        _need("time", self.time, 3)
        d = _bcd_digits("date", self.date)
        t = _bcd_digits("time", self.time)
        try:
            _date(int(d[:4]), int(d[4:6]), int(d[6:]))
        except ValueError as e:
            raise ValueError(f"date {d} is not a calendar date: {e}") from None
        try:
            _time(int(t[:2]), int(t[2:4]), int(t[4:]))
        except ValueError as e:
            raise ValueError(f"time {t} is not a time of day: {e}") from None

    @classmethod
    def of(cls, yyyymmdd: str, hhmmss: str) -> "When":
        """From digit strings, e.g. ``When.of("20120229", "135100")``."""
        for name, s, n in (("date", yyyymmdd, 8), ("time", hhmmss, 6)):
            if len(s) != n or not s.isdigit():
                raise ValueError(f"{name} must be {n} digits, got {s!r}")
        return cls(bytes.fromhex(yyyymmdd), bytes.fromhex(hhmmss))

    def bcd(self) -> bytes:
        return self.date + self.time


def _need_transaction(kind: str, amount_fen: int, terminal_id: bytes, when: When,
                      card_random: bytes, transaction_type: int, types: frozenset[int]) -> None:
    """The fields a purchase and a load share."""
    _need_int("amount_fen", amount_fen, MAX_AMOUNT_FEN)
    _need("terminal id", terminal_id, 6)
    if not isinstance(when, When):
        raise ValueError("when must be a When")
    _need("card random", card_random, 4)
    if transaction_type not in types:
        allowed = " or ".join(f"{t:02X}" for t in sorted(types))
        got = f"{transaction_type:02X}" if isinstance(transaction_type, int) else repr(transaction_type)
        raise ValueError(f"{kind} transaction type must be {allowed}, got {got}")


@dataclass(frozen=True, slots=True)
class PurchaseInput:
    """What DEBIT FOR PURCHASE's MACs cover: INITIALIZE FOR PURCHASE's answer (card random,
    offline counter) and the terminal's own fields."""

    amount_fen: int
    terminal_id: bytes  # 6 bytes
    terminal_seq: int  # the terminal's (SAM's) transaction sequence number, 4 bytes
    when: When
    card_random: bytes  # 4 bytes, from the card
    offline_counter: int  # the card's offline transaction counter, before this purchase
    transaction_type: int = PURCHASE_EP

    def __post_init__(self) -> None:
        _need_transaction("purchase", self.amount_fen, self.terminal_id, self.when,
                          self.card_random, self.transaction_type, PURCHASE_TYPES)
        _need_int("terminal seq", self.terminal_seq, 0xFFFFFFFF)
        _need_int("offline counter", self.offline_counter, 0xFFFF)


@dataclass(frozen=True, slots=True)
class LoadInput:
    """What a load's MACs cover: INITIALIZE FOR LOAD's answer and the host's fields."""

    amount_fen: int
    balance_before_fen: int
    terminal_id: bytes  # 6 bytes
    when: When  # the host's date and time, sent in CREDIT FOR LOAD
    card_random: bytes  # 4 bytes
    online_counter: int  # the card's online transaction counter, before this load
    transaction_type: int = LOAD_EP

    def __post_init__(self) -> None:
        _need_transaction("load", self.amount_fen, self.terminal_id, self.when,
                          self.card_random, self.transaction_type, LOAD_TYPES)
        _need_int("balance_before_fen", self.balance_before_fen, MAX_AMOUNT_FEN)
        _need_int("online counter", self.online_counter, 0xFFFF)


def _amount(fen: int) -> bytes:
    return fen.to_bytes(4, "big")


# -- purchase -----------------------------------------------------------------------------
def purchase_mac1(sespk: bytes, p: PurchaseInput) -> bytes:
    """Terminal (SAM) to card in DEBIT FOR PURCHASE:
    MAC(SESPK, amount || type || terminal id || date || time)."""
    _need_key("SESPK", sespk, (8,))
    data = _amount(p.amount_fen) + bytes([p.transaction_type]) + p.terminal_id + p.when.bcd()
    return mac4(sespk, data)


def purchase_mac2(sespk: bytes, amount_fen: int) -> bytes:
    """Card to terminal, proving the debit: MAC(SESPK, amount)."""
    _need_key("SESPK", sespk, (8,))
    _need_int("amount_fen", amount_fen, MAX_AMOUNT_FEN)
    return mac4(sespk, _amount(amount_fen))


def purchase_tac(dtk: bytes, p: PurchaseInput) -> bytes:
    """The card's transaction certificate, checked later by the issuer: MAC(DTK left XOR right,
    amount || type || terminal id || terminal seq (4) || date || time)."""
    data = (_amount(p.amount_fen) + bytes([p.transaction_type]) + p.terminal_id
            + p.terminal_seq.to_bytes(4, "big") + p.when.bcd())
    return mac4(tac_key(dtk), data)


# -- load ---------------------------------------------------------------------------------
def load_mac1(seslk: bytes, ld: LoadInput) -> bytes:
    """Card to host in INITIALIZE FOR LOAD: MAC(SESLK, balance before || amount || type ||
    terminal id)."""
    _need_key("SESLK", seslk, (8,))
    data = (_amount(ld.balance_before_fen) + _amount(ld.amount_fen) + bytes([ld.transaction_type])
            + ld.terminal_id)
    return mac4(seslk, data)


def load_mac2(seslk: bytes, ld: LoadInput) -> bytes:
    """Host to card in CREDIT FOR LOAD: MAC(SESLK, amount || type || terminal id || date ||
    time)."""
    _need_key("SESLK", seslk, (8,))
    data = _amount(ld.amount_fen) + bytes([ld.transaction_type]) + ld.terminal_id + ld.when.bcd()
    return mac4(seslk, data)


def load_tac(dtk: bytes, ld: LoadInput) -> bytes:
    """The card's certificate of a load, for the issuer: MAC(DTK left XOR right, balance after
    (4) || online counter before (2) || amount (4) || type (1) || terminal id (6) || date (4) ||
    time (3)). Our reading of JR/T 0025 (docs/card.md): the field list was not confirmed in a
    published example, so its vector is a regression vector only."""
    after = ld.balance_before_fen + ld.amount_fen
    _need_int("balance after", after, MAX_AMOUNT_FEN)
    data = (_amount(after) + ld.online_counter.to_bytes(2, "big") + _amount(ld.amount_fen)
            + bytes([ld.transaction_type]) + ld.terminal_id + ld.when.bcd())
    return mac4(tac_key(dtk), data)
