"""The city-pass card application, sans-I/O: command APDU bytes in, response APDU bytes out.

What a personalised card does for the e-purse purchase (JR/T 0025 ED/EP, docs/card.md):
SELECT of its AID, GET BALANCE, INITIALIZE FOR PURCHASE (the card's random and offline
counter), DEBIT FOR PURCHASE (checks MAC1, debits, answers TAC and MAC2) and GET TRANSACTION
PROOF (the MAC2 and TAC of the last purchase again, for a terminal whose answer was torn).

The emulator is this plus I/O (the vpcd link, a state file); the card's random comes in from
the shell, so the state machine stays deterministic under test.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from ..domain.epurse_crypto import (
    PURCHASE_EP,
    PurchaseInput,
    When,
    purchase_mac1,
    purchase_mac2,
    purchase_session_key,
    purchase_tac,
    same_mac,
)
from ..domain.offline import CardKeys
from .apdu import ApduError, Command, Response, StatusWord, parse_command

CITY_PASS_AID = bytes.fromhex("A000000632010105")  # the city-pass e-purse application
PURCHASE_KEY_INDEX = 0x01  # the one purchase key a card holds
KEY_VERSION = 0x01
ALGORITHM_3DES = 0x00
CLA_PBOC = 0x80


@dataclass
class PurseState:
    """What the card keeps between taps (the emulator persists it)."""

    balance_fen: int
    offline_counter: int = 0  # purchases made; the key of each offline record
    last_proof: tuple[int, bytes, bytes] | None = None  # (counter of the purchase, MAC2, TAC)


@dataclass
class _Pending:
    """INITIALIZE FOR PURCHASE's half of a purchase, until DEBIT FOR PURCHASE."""

    amount_fen: int
    terminal_id: bytes
    card_random: bytes


@dataclass
class EpurseCard:
    keys: CardKeys
    state: PurseState
    random4: Callable[[], bytes]  # 4 random bytes a call: the card's challenge
    _selected: bool = False
    _pending: _Pending | None = field(default=None, repr=False)

    def power_on(self) -> None:
        """A new session in the field: nothing selected, no purchase half done."""
        self._selected, self._pending = False, None

    def answer(self, raw: bytes) -> bytes:
        try:
            cmd = parse_command(raw)
        except ApduError:
            return _sw(StatusWord.WRONG_LENGTH)
        if cmd.cla == 0x00 and cmd.ins == 0xA4:
            return self._select(cmd)
        if cmd.cla != CLA_PBOC:
            return _sw(StatusWord.CLA_NOT_SUPPORTED)
        handler = {0x5C: self._get_balance, 0x50: self._init_purchase, 0x54: self._debit,
                   0x5A: self._proof}.get(cmd.ins)
        if handler is None:
            return _sw(StatusWord.INS_NOT_SUPPORTED)
        if not self._selected:
            return _sw(StatusWord.CONDITIONS_NOT_SATISFIED)
        return handler(cmd)

    def _select(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x04 or cmd.data != CITY_PASS_AID:
            self._selected = False
            return _sw(StatusWord.FILE_NOT_FOUND)
        self._selected, self._pending = True, None
        fci = bytes([0x6F, 4 + len(CITY_PASS_AID) + 2, 0x84, len(CITY_PASS_AID)]) + CITY_PASS_AID + b"\xa5\x00"
        return Response(fci, 0x9000).encode()

    def _get_balance(self, cmd: Command) -> bytes:
        if (cmd.p1, cmd.p2) != (0x00, 0x02):
            return _sw(StatusWord.INCORRECT_P1P2)
        return Response(self.state.balance_fen.to_bytes(4, "big"), 0x9000).encode()

    def _init_purchase(self, cmd: Command) -> bytes:
        if (cmd.p1, cmd.p2) != (0x01, 0x02):
            return _sw(StatusWord.INCORRECT_P1P2)
        if len(cmd.data) != 11:
            return _sw(StatusWord.WRONG_LENGTH)
        if cmd.data[0] != PURCHASE_KEY_INDEX:
            return _sw(StatusWord.KEY_INDEX_NOT_SUPPORTED)
        amount_fen = int.from_bytes(cmd.data[1:5], "big")
        if amount_fen > self.state.balance_fen:
            return _sw(StatusWord.INSUFFICIENT_BALANCE)
        if self.state.offline_counter >= 0xFFFF:
            return _sw(StatusWord.CONDITIONS_NOT_SATISFIED)  # the counter is spent: the card is full
        card_random = self.random4()
        self._pending = _Pending(amount_fen, bytes(cmd.data[5:11]), card_random)
        body = (self.state.balance_fen.to_bytes(4, "big") + self.state.offline_counter.to_bytes(2, "big")
                + bytes(3) + bytes([KEY_VERSION, ALGORITHM_3DES]) + card_random)
        return Response(body, 0x9000).encode()

    def _debit(self, cmd: Command) -> bytes:
        pending, self._pending = self._pending, None  # one try per INITIALIZE: a wrong MAC1 ends it
        if pending is None:
            return _sw(StatusWord.CONDITIONS_NOT_SATISFIED)
        if (cmd.p1, cmd.p2) != (0x01, 0x00) or len(cmd.data) != 15:
            return _sw(StatusWord.WRONG_LENGTH)
        seq = int.from_bytes(cmd.data[0:4], "big")
        try:
            when = When(bytes(cmd.data[4:8]), bytes(cmd.data[8:11]))
        except ValueError:
            return _sw(StatusWord.WRONG_DATA)
        p = PurchaseInput(pending.amount_fen, pending.terminal_id, seq, when, pending.card_random,
                          self.state.offline_counter, PURCHASE_EP)
        sespk = purchase_session_key(self.keys.dpk, pending.card_random, self.state.offline_counter, seq)
        if not same_mac(purchase_mac1(sespk, p), bytes(cmd.data[11:15])):
            return _sw(StatusWord.MAC_INVALID)
        mac2, tac = purchase_mac2(sespk, p.amount_fen), purchase_tac(self.keys.dtk, p)
        self.state.balance_fen -= p.amount_fen
        self.state.last_proof = (self.state.offline_counter, mac2, tac)
        self.state.offline_counter += 1
        return Response(tac + mac2, 0x9000).encode()

    def _proof(self, cmd: Command) -> bytes:
        if cmd.p2 != PURCHASE_EP:
            return _sw(StatusWord.INCORRECT_P1P2)
        if len(cmd.data) != 2:
            return _sw(StatusWord.WRONG_LENGTH)
        counter = int.from_bytes(cmd.data, "big")
        proof = self.state.last_proof
        if proof is None or proof[0] != counter:
            return _sw(StatusWord.REQUIRED_MAC_UNAVAILABLE)
        return Response(proof[1] + proof[2], 0x9000).encode()


def _sw(word: int) -> bytes:
    return Response(b"", int(word)).encode()
