"""The city-pass card application, sans-I/O: command APDU bytes in, response APDU bytes out.

What a personalised card does (JR/T 0025 ED/EP and the JT/T 978 compound purchase,
docs/card.md): SELECT of its AID, GET BALANCE, READ BINARY / READ RECORD of its files, the
purchase (INITIALIZE / DEBIT FOR PURCHASE), the compound purchase (INITIALIZE FOR CAPP
PURCHASE, UPDATE CAPP DATA CACHE, DEBIT FOR CAPP PURCHASE: the debit and the transit record
change together), the load (INITIALIZE FOR LOAD, CREDIT FOR LOAD) and GET TRANSACTION PROOF
(the last purchase's or load's proof again, for a terminal whose answer was torn).

The emulator is this plus I/O (the vpcd link, a state file); the card's random comes in from
the shell, so the state machine stays deterministic under test. Every refusal leaves the
purse, the counters, the files and the log as they were.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from ..domain.epurse_crypto import (
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
    same_mac,
)
from ..domain.offline import CardKeys
from .apdu import ApduError, Command, Response, StatusWord, parse_command
from .card_files import (
    SFI_CAPP,
    SFI_HOLDER,
    SFI_ISSUER,
    SFI_LOG,
    TRANSIT_RECORD,
    CardImage,
    HolderData,
    IssuerData,
    LogEntry,
    TransitRecord,
    log_append,
)
from .card_read import read_binary, read_record, sw

CITY_PASS_AID = bytes.fromhex("A000000632010105")  # the city-pass e-purse application
PURCHASE_KEY_INDEX = 0x01  # the one purchase key a card holds
LOAD_KEY_INDEX = 0x01  # the one load key
KEY_VERSION = 0x01
ALGORITHM_3DES = 0x00
CLA_ISO = 0x00
CLA_PBOC = 0x80
MAX_BALANCE_FEN = 100_000  # 1,000 yuan: a load past it is refused (6A80)
MAX_COUNTER = 0xFFFF
P1_PURCHASE, P1_CAPP_PURCHASE, P1_LOAD = 0x01, 0x03, 0x00
P2_EP = 0x02
_NO_DATE = When.of("20000101", "000000")  # load MAC1 covers no date; LoadInput wants one


@dataclass
class PurseState:
    """What the card keeps between taps (the emulator persists it)."""

    balance_fen: int
    offline_counter: int = 0  # purchases made; the key of each offline record
    last_proof: tuple[int, bytes, bytes] | None = None  # (counter of the purchase, MAC2, TAC)
    online_counter: int = 0  # loads made
    last_proof_type: int = PURCHASE_EP  # 06 or 09: which purchase last_proof is of
    last_load_proof: tuple[int, bytes] | None = None  # (online counter of the load, TAC)
    log: tuple[LogEntry, ...] = ()  # EF 0x18, newest first


@dataclass
class CardFiles:
    """The application's files; a card without issuer data (a bare test card) answers 6A82."""

    issuer: IssuerData | None = None
    holder: HolderData | None = None
    transit: TransitRecord = field(default_factory=TransitRecord)


@dataclass
class _Pending:
    """INITIALIZE's half of a transaction, until its DEBIT or CREDIT."""

    transaction_type: int  # 06 purchase, 09 compound purchase, 02 load
    amount_fen: int
    terminal_id: bytes
    card_random: bytes
    transit: TransitRecord | None = None  # UPDATE CAPP DATA CACHE's record, not written yet


@dataclass
class EpurseCard:
    keys: CardKeys
    state: PurseState
    random4: Callable[[], bytes]  # 4 random bytes a call: the card's challenge
    files: CardFiles = field(default_factory=CardFiles)
    _selected: bool = False
    _pending: _Pending | None = field(default=None, repr=False)

    @classmethod
    def from_image(cls, image: CardImage, random4: Callable[[], bytes]) -> "EpurseCard":
        """A card as personalise() made it."""
        return cls(image.keys, PurseState(image.balance_fen, image.offline_counter, online_counter=image.online_counter,
                                          log=image.log),
                   random4, CardFiles(image.issuer, image.holder, image.transit))

    def power_on(self) -> None:
        """A new session in the field: nothing selected, no transaction half done."""
        self._selected, self._pending = False, None

    @property
    def blocked(self) -> bool:
        return self.files.issuer is not None and self.files.issuer.blocked

    def answer(self, raw: bytes) -> bytes:
        try:
            cmd = parse_command(raw)
        except ApduError:
            return sw(StatusWord.WRONG_LENGTH)
        if cmd.cla == CLA_ISO:
            if cmd.ins == 0xA4:
                return self._select(cmd)
            if cmd.ins in (0xB0, 0xB2):
                return self._read(cmd)
        if cmd.cla not in (CLA_ISO, CLA_PBOC):
            return sw(StatusWord.CLA_NOT_SUPPORTED)
        handler = _PBOC.get(cmd.ins) if cmd.cla == CLA_PBOC else None
        if handler is None:
            return sw(StatusWord.INS_NOT_SUPPORTED)
        if not self._selected:
            return sw(StatusWord.CONDITIONS_NOT_SATISFIED)
        return handler(self, cmd)

    # -- select, balance, files -----------------------------------------------------------
    def _select(self, cmd: Command) -> bytes:
        self._selected, self._pending = False, None
        if cmd.p1 != 0x04 or cmd.data != CITY_PASS_AID:
            return sw(StatusWord.FILE_NOT_FOUND)
        if self.blocked:
            return sw(StatusWord.FUNCTION_NOT_SUPPORTED)  # 6A81: the application is blocked
        self._selected = True
        fci = bytes([0x6F, 4 + len(CITY_PASS_AID) + 2, 0x84, len(CITY_PASS_AID)]) + CITY_PASS_AID + b"\xa5\x00"
        return Response(fci, 0x9000).encode()

    def _read(self, cmd: Command) -> bytes:
        if not self._selected:
            return sw(StatusWord.FILE_NOT_FOUND)  # not in the MF: the files are the application's
        f = self.files
        if cmd.ins == 0xB0:
            binaries = {sfi: d.encode() for sfi, d in ((SFI_ISSUER, f.issuer), (SFI_HOLDER, f.holder)) if d is not None}
            return read_binary(cmd, binaries)
        return read_record(cmd, [f.transit.encode()], [e.encode() for e in self.state.log])

    def _get_balance(self, cmd: Command) -> bytes:
        if (cmd.p1, cmd.p2) != (0x00, P2_EP):
            return sw(StatusWord.INCORRECT_P1P2)
        return Response(self.state.balance_fen.to_bytes(4, "big"), 0x9000).encode()

    # -- INITIALIZE (purchase, compound purchase, load) -------------------------------------
    def _initialize(self, cmd: Command) -> bytes:
        kind = {P1_PURCHASE: PURCHASE_EP, P1_CAPP_PURCHASE: COMPOUND_PURCHASE, P1_LOAD: LOAD_EP}.get(cmd.p1)
        if kind is None or cmd.p2 != P2_EP:
            return sw(StatusWord.INCORRECT_P1P2)
        if len(cmd.data) != 11:
            return sw(StatusWord.WRONG_LENGTH)
        if cmd.data[0] != (LOAD_KEY_INDEX if kind == LOAD_EP else PURCHASE_KEY_INDEX):
            return sw(StatusWord.KEY_INDEX_NOT_SUPPORTED)
        amount_fen = int.from_bytes(cmd.data[1:5], "big")
        terminal_id = bytes(cmd.data[5:11])
        return self._init_load(amount_fen, terminal_id) if kind == LOAD_EP else \
            self._init_purchase(kind, amount_fen, terminal_id)

    def _init_purchase(self, kind: int, amount_fen: int, terminal_id: bytes) -> bytes:
        st = self.state
        if amount_fen > st.balance_fen:
            return sw(StatusWord.INSUFFICIENT_BALANCE)
        if st.offline_counter >= MAX_COUNTER:
            return sw(StatusWord.CONDITIONS_NOT_SATISFIED)  # the counter is spent: the card is full
        card_random = self.random4()
        self._pending = _Pending(kind, amount_fen, terminal_id, card_random)
        body = (st.balance_fen.to_bytes(4, "big") + st.offline_counter.to_bytes(2, "big")
                + bytes(3) + bytes([KEY_VERSION, ALGORITHM_3DES]) + card_random)
        return Response(body, 0x9000).encode()

    def _init_load(self, amount_fen: int, terminal_id: bytes) -> bytes:
        st = self.state
        if amount_fen == 0 or st.balance_fen + amount_fen > MAX_BALANCE_FEN:
            return sw(StatusWord.WRONG_DATA)  # 6A80: the purse would pass its maximum
        if st.online_counter >= MAX_COUNTER:
            return sw(StatusWord.CONDITIONS_NOT_SATISFIED)
        card_random = self.random4()
        self._pending = _Pending(LOAD_EP, amount_fen, terminal_id, card_random)
        ld = LoadInput(amount_fen, st.balance_fen, terminal_id, _NO_DATE, card_random, st.online_counter)
        mac1 = load_mac1(load_session_key(self.keys.dlk, card_random, st.online_counter), ld)
        body = (st.balance_fen.to_bytes(4, "big") + st.online_counter.to_bytes(2, "big")
                + bytes([KEY_VERSION, ALGORITHM_3DES]) + card_random + mac1)
        return Response(body, 0x9000).encode()

    # -- the compound purchase's cache --------------------------------------------------------
    def _update_capp_cache(self, cmd: Command) -> bytes:
        pending = self._pending
        if pending is None or pending.transaction_type != COMPOUND_PURCHASE:
            return sw(StatusWord.CONDITIONS_NOT_SATISFIED)
        sfi = cmd.p2 >> 3
        if cmd.p2 & 0x07:
            return sw(StatusWord.INCORRECT_P1P2)
        if sfi != SFI_CAPP:
            known = sfi in (SFI_ISSUER, SFI_HOLDER, SFI_LOG)
            return sw(StatusWord.COMMAND_INCOMPATIBLE_WITH_FILE if known else StatusWord.FILE_NOT_FOUND)
        if cmd.p1 != TRANSIT_RECORD:
            return sw(StatusWord.RECORD_NOT_FOUND)
        if len(cmd.data) != TransitRecord.LENGTH:
            return sw(StatusWord.WRONG_LENGTH)
        try:
            pending.transit = TransitRecord.decode(bytes(cmd.data))
        except ValueError:
            return sw(StatusWord.WRONG_DATA)
        return sw(StatusWord.OK)

    # -- DEBIT (purchase or compound purchase) ------------------------------------------------
    def _debit(self, cmd: Command) -> bytes:
        pending, self._pending = self._pending, None  # one try per INITIALIZE: a wrong MAC1 ends it
        if pending is None or pending.transaction_type == LOAD_EP:
            return sw(StatusWord.CONDITIONS_NOT_SATISFIED)
        if (cmd.p1, cmd.p2) != (0x01, 0x00) or len(cmd.data) != 15:
            return sw(StatusWord.WRONG_LENGTH)
        st = self.state
        seq = int.from_bytes(cmd.data[0:4], "big")
        try:
            when = When(bytes(cmd.data[4:8]), bytes(cmd.data[8:11]))
        except ValueError:
            return sw(StatusWord.WRONG_DATA)
        p = PurchaseInput(pending.amount_fen, pending.terminal_id, seq, when, pending.card_random,
                          st.offline_counter, pending.transaction_type)
        sespk = purchase_session_key(self.keys.dpk, pending.card_random, st.offline_counter, seq)
        if not same_mac(purchase_mac1(sespk, p), bytes(cmd.data[11:15])):
            return sw(StatusWord.MAC_INVALID)
        mac2, tac = purchase_mac2(sespk, p.amount_fen), purchase_tac(self.keys.dtk, p)
        # From here on nothing can fail: the debit, the cached record and the log change together.
        entry = LogEntry(st.offline_counter, p.amount_fen, p.transaction_type, p.terminal_id, when.date, when.time)
        st.balance_fen -= p.amount_fen
        st.last_proof, st.last_proof_type = (st.offline_counter, mac2, tac), p.transaction_type
        st.offline_counter += 1
        st.log = log_append(st.log, entry)
        if pending.transit is not None:
            self.files.transit = pending.transit
        return Response(tac + mac2, 0x9000).encode()

    # -- CREDIT FOR LOAD ----------------------------------------------------------------------
    def _credit(self, cmd: Command) -> bytes:
        pending, self._pending = self._pending, None
        if pending is None or pending.transaction_type != LOAD_EP:
            return sw(StatusWord.CONDITIONS_NOT_SATISFIED)
        if (cmd.p1, cmd.p2) != (0x00, 0x00) or len(cmd.data) != 11:
            return sw(StatusWord.WRONG_LENGTH)
        st = self.state
        try:
            when = When(bytes(cmd.data[0:4]), bytes(cmd.data[4:7]))
        except ValueError:
            return sw(StatusWord.WRONG_DATA)
        ld = LoadInput(pending.amount_fen, st.balance_fen, pending.terminal_id, when, pending.card_random,
                       st.online_counter)
        seslk = load_session_key(self.keys.dlk, pending.card_random, st.online_counter)
        if not same_mac(load_mac2(seslk, ld), bytes(cmd.data[7:11])):
            return sw(StatusWord.MAC_INVALID)
        tac = load_tac(self.keys.dtk, ld)
        entry = LogEntry(st.online_counter, ld.amount_fen, LOAD_EP, ld.terminal_id, when.date, when.time)
        st.balance_fen += ld.amount_fen
        st.last_load_proof = (st.online_counter, tac)
        st.online_counter += 1
        st.log = log_append(st.log, entry)
        return Response(tac, 0x9000).encode()

    # -- GET TRANSACTION PROOF ------------------------------------------------------------------
    def _proof(self, cmd: Command) -> bytes:
        if cmd.p2 not in (PURCHASE_EP, COMPOUND_PURCHASE, LOAD_EP):
            return sw(StatusWord.INCORRECT_P1P2)
        if len(cmd.data) != 2:
            return sw(StatusWord.WRONG_LENGTH)
        counter = int.from_bytes(cmd.data, "big")
        st = self.state
        if cmd.p2 == LOAD_EP:
            load = st.last_load_proof
            if load is None or load[0] != counter:
                return sw(StatusWord.REQUIRED_MAC_UNAVAILABLE)
            return Response(load[1], 0x9000).encode()
        proof = st.last_proof
        if proof is None or proof[0] != counter or st.last_proof_type != cmd.p2:
            return sw(StatusWord.REQUIRED_MAC_UNAVAILABLE)
        return Response(proof[1] + proof[2], 0x9000).encode()


_PBOC: dict[int, Callable[[EpurseCard, Command], bytes]] = {
    0x5C: EpurseCard._get_balance, 0x50: EpurseCard._initialize, 0xDC: EpurseCard._update_capp_cache,
    0x54: EpurseCard._debit, 0x52: EpurseCard._credit, 0x5A: EpurseCard._proof,
}

__all__ = ["CITY_PASS_AID", "MAX_BALANCE_FEN", "CardFiles", "EpurseCard", "PurseState", "SFI_LOG"]
