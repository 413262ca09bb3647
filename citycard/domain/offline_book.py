"""The host's decision on each offline record, pure (docs/protocol.md section 15.3).

Per card the host keeps a shadow of the purse: what was loaded onto it through the host
(loads count from the moment MAC2 is issued, so a credit that did reach the card is never
missing), what offline records say was spent, the highest offline counter journaled and which
counters just below it were seen (a bounded window, for gaps). Each record is then decided:
journal it, or answer it as a duplicate, or refuse it; some refusals put the card on the
hotlist. The shell (gateway/offline.py) looks up what is already journaled, calls ``decide``
record by record in upload order, and commits what it says.
"""

import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from .epurse_crypto import PURCHASE_TYPES, tac_key
from .offline import IssuerKeys, OfflineRecord

try:  # cryptography >= 43 keeps 3DES among the "decrepit" algorithms
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

WINDOW = 256  # counters below a card's highest whose arrival is tracked (gaps); older ones just count
_WINDOW_MASK = (1 << WINDOW) - 1


class OfflineCode(IntEnum):
    """The host's decision on one offline record (docs/protocol.md, section 15.3). Every code in
    an ``offline_ack`` is durable and final: the validator may delete each acknowledged record.
    Wire values: append only."""

    ACCEPTED = 0  # journaled now
    DUPLICATE = 1  # already journaled with the same content (a retry): nothing new
    BAD_TAC = 2  # the card's TAC does not check: kept aside, not journaled as money; card hotlisted
    COUNTER_REUSED = 3  # this card's counter is journaled with other content: card hotlisted
    CARD_UNKNOWN = 4  # no such card issued: kept aside
    BALANCE_IMPOSSIBLE = 5  # journaled; the purse would be negative or claims more than loaded: hotlisted
    BAD_RECORD = 6  # fields the schema passes but a card cannot make (date, type): kept aside
    FORWARDED = 7  # another issuer's card: kept once for that issuer's clearing file (it checks the TAC)
    UNKNOWN_ISSUER = 8  # a card no issuer this host knows numbers: not kept


# Codes after which the card goes on the hotlist.
OFFLINE_HOTLISTS = frozenset({OfflineCode.BAD_TAC, OfflineCode.COUNTER_REUSED, OfflineCode.BALANCE_IMPOSSIBLE})
# Codes whose record is journaled as the card's money (offline_records); the others are kept aside.
JOURNALED = frozenset({OfflineCode.ACCEPTED, OfflineCode.BALANCE_IMPOSSIBLE})


@dataclass(slots=True)
class CardShadow:
    """The host's shadow of one card's purse. ``last_counter`` -1: no record journaled yet.
    ``seen``: bit i set = counter ``last_counter - i`` journaled (i < WINDOW)."""

    card_no: int
    last_counter: int = -1
    loaded_fen: int = 0
    spent_fen: int = 0
    seen: int = 0
    missing: int = 0  # counters below last_counter not journaled (gaps still open), as far as known

    @property
    def balance_fen(self) -> int:
        return self.loaded_fen - self.spent_fen

    def load(self, amount_fen: int) -> None:
        self.loaded_fen += amount_fen

    def copy(self) -> "CardShadow":
        return CardShadow(self.card_no, self.last_counter, self.loaded_fen, self.spent_fen, self.seen, self.missing)

    def may_hold(self, counter: int) -> bool:
        """Whether a record under ``counter`` may be journaled already (then look it up): above
        the highest counter none is; inside the window its bit says; below it, maybe."""
        offset = self.last_counter - counter
        if offset < 0:
            return False
        return offset >= WINDOW or bool(self.seen >> offset & 1)


def shadow_of_journal(card_no: int, loaded_fen: int, spent_fen: int, journaled: int, last_counter: int,
                      top_counters: list[int]) -> CardShadow:
    """A card's shadow as its journal makes it: ``spent_fen`` the sum of its journaled records,
    ``journaled`` their count, ``last_counter`` the highest (-1: none), ``top_counters`` the
    journaled counters inside the window below it (more are ignored). The same shadow
    ``decide`` builds record by record, whatever the order the records came in."""
    seen = 0
    for c in top_counters:
        offset = last_counter - c
        if 0 <= offset < WINDOW:
            seen |= 1 << offset
    missing = max(0, last_counter + 1 - journaled) if last_counter >= 0 else 0
    return CardShadow(card_no, last_counter, loaded_fen, spent_fen, seen, missing)


@dataclass(frozen=True, slots=True)
class Decision:
    code: OfflineCode
    gap: tuple[int, int] | None = None  # counters this record showed were skipped (first, last)
    filled_gap: bool = False  # the record came in below the card's highest counter, in a gap
    reason: str = ""  # why the card goes on the hotlist (codes in OFFLINE_HOTLISTS)

    @property
    def hotlists(self) -> bool:
        return self.code in OFFLINE_HOTLISTS

    @property
    def journaled(self) -> bool:
        return self.code in JOURNALED


_ACCEPTED = Decision(OfflineCode.ACCEPTED)


def same_content(a: OfflineRecord, b: OfflineRecord) -> bool:
    """Same record: every field the card and the SAM made (the kind and route are the
    validator's, and the terminal id and seq travel with the SAM, so all count)."""
    return a == b


def decide(shadow: CardShadow | None, record: OfflineRecord, journaled: OfflineRecord | None,
           tac_ok: bool) -> Decision:
    """The decision on ``record``, given the card's shadow (None: no such card), the record
    already journaled under the same (card, counter) if any, and whether its TAC checks.
    Updates ``shadow`` for what is journaled."""
    if shadow is None:
        return Decision(OfflineCode.CARD_UNKNOWN)
    if record.transaction_type not in PURCHASE_TYPES:
        return Decision(OfflineCode.BAD_RECORD)
    if journaled is not None and same_content(journaled, record):
        return Decision(OfflineCode.DUPLICATE)
    if not tac_ok:
        return Decision(OfflineCode.BAD_TAC, reason=f"offline record with a forged TAC ({_where(record)})")
    if journaled is not None:
        return Decision(OfflineCode.COUNTER_REUSED,
                        reason=f"offline counter used twice with other content ({_where(record)})")
    gap, filled = _journal(shadow, record)
    balance = shadow.balance_fen
    if balance < 0:
        return Decision(OfflineCode.BALANCE_IMPOSSIBLE, gap, filled,
                        f"offline purchases exceed loads by {-balance} fen ({_where(record)})")
    # Every purchase journaled came before the newest: the card holds at most what was loaded
    # less all of them. (Below the newest, later purchases are in the sum: no bound.)
    if record.balance_after_fen > balance and record.offline_counter == shadow.last_counter:
        return Decision(OfflineCode.BALANCE_IMPOSSIBLE, gap, filled,
                        f"card reports {record.balance_after_fen} fen after a purchase, at most {balance} "
                        f"were loaded and not spent ({_where(record)})")
    if gap is None and not filled:
        return _ACCEPTED  # the common case: one shared answer
    return Decision(OfflineCode.ACCEPTED, gap, filled)


def accept_new(shadow: CardShadow, counter: int, amount_fen: int, balance_after_fen: int,
               transaction_type: int) -> Decision | None:
    """``decide``'s answer for a record above the card's highest counter (so not journaled)
    whose TAC checks, from its fields, when that answer is ACCEPTED (the shadow updated); None,
    the shadow untouched, for anything else (then ``decide`` it)."""
    last = shadow.last_counter
    if counter <= last or transaction_type not in PURCHASE_TYPES:
        return None
    balance = shadow.loaded_fen - shadow.spent_fen - amount_fen
    if balance < 0 or balance_after_fen > balance:
        return None
    shadow.spent_fen += amount_fen
    shadow.seen = ((shadow.seen << (counter - last)) | 1) & _WINDOW_MASK
    shadow.last_counter = counter
    if counter == last + 1:
        return _ACCEPTED
    shadow.missing += counter - last - 1
    return Decision(OfflineCode.ACCEPTED, (last + 1, counter - 1))


def _where(r: OfflineRecord) -> str:
    return f"counter {r.offline_counter}, terminal {r.terminal_id} seq {r.terminal_seq}"


def _journal(shadow: CardShadow, record: OfflineRecord) -> tuple[tuple[int, int] | None, bool]:
    """Count the record into the shadow; the gap it opens, whether it filled one."""
    shadow.spent_fen += record.amount_fen
    c, last = record.offline_counter, shadow.last_counter
    if c > last:
        skipped = c - last - 1
        shadow.seen = ((shadow.seen << (c - last)) | 1) & _WINDOW_MASK
        shadow.last_counter = c
        shadow.missing += skipped
        return ((last + 1, c - 1) if skipped else None), False
    offset = last - c
    if offset < WINDOW:
        shadow.seen |= 1 << offset
    shadow.missing = max(0, shadow.missing - 1)
    return None, True


# -- the shadows a desk keeps -------------------------------------------------------------------
class ShadowCache:
    """The committed shadows of the cards a desk saw last (an LRU of at most ``max_cards``), and
    which of them its offline_cards rows do not show yet (``dirty``, until written back). Holds
    only committed state: a group decides on copies and installs them after its commit."""

    def __init__(self, max_cards: int) -> None:
        if max_cards < 1:
            raise ValueError("max_cards must be at least 1")
        self._max = max_cards
        self._cards: OrderedDict[int, CardShadow] = OrderedDict()
        self._dirty: dict[int, CardShadow] = {}

    def __len__(self) -> int:
        return len(self._cards)

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    def get(self, card_no: int) -> CardShadow | None:
        s = self._cards.get(card_no)
        if s is not None:
            self._cards.move_to_end(card_no)
        return s

    def install(self, shadows: Iterable[CardShadow], *, dirty: bool = True) -> None:
        """Shadows as committed (``dirty``: their rows still to be written back)."""
        cards = self._cards
        for s in shadows:
            cards[s.card_no] = s
            cards.move_to_end(s.card_no)
            if dirty:
                self._dirty[s.card_no] = s
        while len(cards) > self._max:  # an evicted card's row may still be dirty: kept in _dirty
            cards.popitem(last=False)

    def evict(self, card_nos: Iterable[int]) -> None:
        for c in card_nos:
            self._cards.pop(c, None)

    def take_dirty(self) -> list[CardShadow]:
        """The shadows to write back, in card order; ``untake`` them if the write fails."""
        out = sorted(self._dirty.values(), key=lambda s: s.card_no)
        self._dirty = {}
        return out

    def untake(self, shadows: Iterable[CardShadow]) -> None:
        for s in shadows:
            self._dirty.setdefault(s.card_no, s)  # a newer one installed since wins


# -- TAC checks, fast ---------------------------------------------------------------------------
class TacKeys:
    """Each card's TAC key, diversified once (two 3DES operations) and kept in a bounded LRU,
    with a CBC encryptor under it reused from record to record (creating a cipher costs more
    than the MAC). The MAC is epurse_crypto.purchase_tac's: single-DES CBC-MAC, zero IV, of
    amount || type || terminal id || terminal seq || date || time, ISO 9797-1 padded (24 bytes)."""

    def __init__(self, issuer: IssuerKeys, max_cards: int = 100_000) -> None:
        if max_cards < 1:
            raise ValueError("max_cards must be at least 1")
        self._issuer = issuer
        self._max = max_cards
        self._cards: OrderedDict[int, _TacMac] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cards)

    def tac_ok(self, record: OfflineRecord) -> bool:
        return self.tac_ok_fields(record.card_no, record.amount_fen, record.transaction_type, record.terminal_id,
                                  record.terminal_seq, record.when.bcd(), record.tac)

    def tac_ok_fields(self, card_no: int, amount_fen: int, transaction_type: int, terminal_id: int,
                      terminal_seq: int, when_bcd: bytes, tac: bytes) -> bool:
        """``tac_ok`` from a record's fields (``when_bcd``: date and time, 7 BCD bytes)."""
        try:
            data = _TAC_HEAD.pack(amount_fen, transaction_type, terminal_id >> 32, terminal_id & 0xFFFFFFFF,
                                  terminal_seq) + when_bcd + b"\x80\x00"
        except struct.error:
            return False
        if len(data) != 24:
            return False
        return self._mac_of(card_no).tac(data) == tac

    def _mac_of(self, card_no: int) -> "_TacMac":
        cards = self._cards
        m = cards.get(card_no)
        if m is not None:
            cards.move_to_end(card_no)
            return m
        m = cards[card_no] = _TacMac(tac_key(self._issuer.dtk(card_no)))
        if len(cards) > self._max:
            cards.popitem(last=False)
        return m


_TAC_HEAD = struct.Struct(">IBHII")  # amount (4), type (1), terminal id (6: 2 + 4), terminal seq (4)


class _TacMac:
    """CBC-MAC with a zero IV on a CBC encryptor that keeps running: feeding the first block
    XOR the last ciphertext block out restarts the chain at zero."""

    __slots__ = ("_enc", "_last")

    def __init__(self, key8: bytes) -> None:
        self._enc = Cipher(TripleDES(key8 * 3), modes.CBC(bytes(8))).encryptor()  # K1=K2=K3: single DES
        self._last = 0

    def tac(self, data24: bytes) -> bytes:
        first = (int.from_bytes(data24[:8], "big") ^ self._last).to_bytes(8, "big")
        tail = self._enc.update(first + data24[8:])[-8:]
        self._last = int.from_bytes(tail, "big")
        return tail[:4]


__all__ = ["JOURNALED", "OFFLINE_HOTLISTS", "WINDOW", "CardShadow", "Decision", "OfflineCode", "ShadowCache",
           "TacKeys", "accept_new", "decide", "same_content", "shadow_of_journal"]
