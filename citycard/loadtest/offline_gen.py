"""The load lab's offline (city-pass) generator, pure: what each card holds, the records a card
would make, and the signed batches a validator uploads (docs/protocol.md section 15).

Per card the generator keeps the chip's own state: the purse balance and the offline counter.
A purchase on the card debits the purse and makes a record whose TAC the card computes with its
TAC key (``IssuerKeys.dtk``, diversified once per card and kept in a bounded dict). A card
refuses a purchase its purse cannot pay, so no record is made then. A forged record claims a
purchase the card never made: a TAC that does not check, and nothing debited.

The TAC is ``epurse_crypto.purchase_tac``'s, computed in one CBC pass of ``cryptography``
under the card's cached TAC key (16 us a record, not 85: purchase_tac builds three ciphers and
checks its inputs); tests/unit/test_loadtest_offline.py holds it equal to purchase_tac, and the
audit re-checks every journaled TAC with the reference (``domain.offline.tac_ok``).

No clock and no randomness of its own: times and the ``random.Random`` come in as arguments.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from ..domain.epurse_crypto import COMPOUND_PURCHASE, When, tac_key
from ..domain.offline import IssuerKeys, OfflineRecord, batch_mac, terminal_id_bytes

try:  # cryptography >= 43 keeps 3DES among the "decrepit" algorithms
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

# Validators' terminal ids: far above the city's online terminals (1001.. at most ~350,000 at
# scale 10) and below the protocol's 2^31 - 1, so the two never collide.
VALIDATOR_FIRST_ID = 1_900_000_001
VALIDATOR_MAX = 10_000
FARES_FEN = (100, 150, 200, 300)  # a bus ride paid from the purse (city-pass fares)
CITY_UTC_OFFSET = timedelta(hours=8)  # the card's date and time are the city's local time
MAX_COUNTER = 0xFFFF


def validator_ids(n: int) -> list[int]:
    if not 0 < n <= VALIDATOR_MAX:
        raise ValueError(f"offline terminals must be 1..{VALIDATOR_MAX}, got {n}")
    return [VALIDATOR_FIRST_ID + i for i in range(n)]


def is_validator(terminal_id: int) -> bool:
    return VALIDATOR_FIRST_ID <= terminal_id < VALIDATOR_FIRST_ID + VALIDATOR_MAX


def when_at(unix_ms: float, offset: timedelta = CITY_UTC_OFFSET) -> When:
    """The validator's local date and time of ``unix_ms``, to the second."""
    t = datetime.fromtimestamp(int(unix_ms // 1000), UTC) + offset
    return When.of(t.strftime("%Y%m%d"), t.strftime("%H%M%S"))


class WhenCache:
    """``when_at`` once per second (a When checks its calendar date: ~14 us)."""

    def __init__(self) -> None:
        self._second = -1
        self._when: When | None = None

    def __call__(self, unix_ms: float) -> When:
        second = int(unix_ms // 1000)
        if second != self._second or self._when is None:
            self._when, self._second = when_at(second * 1000), second
        return self._when


@dataclass(slots=True)
class CardPurse:
    """What one card's chip holds, as the generator tracks it."""

    card_no: int
    balance_fen: int
    counter: int  # the next purchase's offline counter
    first_counter: int = -1  # the run's first counter on this card (set at start)
    records: int = 0
    spent_fen: int = 0

    def __post_init__(self) -> None:
        if self.first_counter < 0:
            self.first_counter = self.counter


class DtkCache:
    """Each card's TAC key, diversified once (two 3DES operations), at most ``max_cards``
    kept: past that the oldest goes."""

    def __init__(self, issuer: IssuerKeys, max_cards: int = 100_000) -> None:
        if max_cards < 1:
            raise ValueError("max_cards must be at least 1")
        self.issuer = issuer
        self.max_cards = max_cards
        self._keys: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __call__(self, card_no: int) -> bytes:
        key = self._keys.get(card_no)
        if key is None:
            if len(self._keys) >= self.max_cards:
                del self._keys[next(iter(self._keys))]
            key = self._keys[card_no] = self.issuer.dtk(card_no)
        return key


class CardTacs:
    """The TACs cards make: each card's TAC key (from its DTK, ``DtkCache``) kept as a 3DES
    key with K1 = K2 = K3, i.e. single DES, at most ``max_cards`` of them."""

    def __init__(self, dtk: DtkCache, max_cards: int = 100_000) -> None:
        if max_cards < 1:
            raise ValueError("max_cards must be at least 1")
        self.dtk = dtk
        self.max_cards = max_cards
        self._keys: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def tac(self, card_no: int, amount_fen: int, transaction_type: int, terminal_id: bytes, terminal_seq: int,
            when: When) -> bytes:
        """purchase_tac: the CBC-MAC (zero IV, ISO 9797-1 padding: 22 bytes + 80 00) of amount ||
        type || terminal id || terminal seq || date || time, its 4 leftmost bytes."""
        key = self._keys.get(card_no)
        if key is None:
            if len(self._keys) >= self.max_cards:
                del self._keys[next(iter(self._keys))]
            key = self._keys[card_no] = tac_key(self.dtk(card_no)) * 3
        data = (amount_fen.to_bytes(4, "big") + bytes((transaction_type,)) + terminal_id
                + terminal_seq.to_bytes(4, "big") + when.bcd() + b"\x80\x00")
        return Cipher(TripleDES(key), modes.CBC(bytes(8))).encryptor().update(data)[-8:-4]


@dataclass
class Made:
    """One record the generator made, and whether it is a forgery (expected BAD_TAC)."""

    record: OfflineRecord
    forged: bool = False


class CardDeck:
    """The offline cards and their on-card state; makes the records cards would make."""

    def __init__(self, purses: Sequence[CardPurse], dtk: DtkCache, rng: random.Random) -> None:
        if not purses:
            raise ValueError("offline mode needs at least one card")
        self.purses = list(purses)
        self.by_card = {p.card_no: p for p in self.purses}
        if len(self.by_card) != len(self.purses):
            raise ValueError("offline cards must be distinct")
        self.tacs = CardTacs(dtk)
        self.rng = rng
        self.active = list(range(len(self.purses)))  # cards still riding (forged ones leave)
        self.refused = 0  # purchases a card refused: its purse could not pay
        self.forged: list[tuple[int, int]] = []  # (card, counter) of forged records

    def purchase(self, terminal_id: int, terminal_seq: int, when: When, kind: int, route: int,
                 forge: bool = False) -> Made | None:
        """One purchase by a random card at this validator, or None (the card could not pay,
        or its counter is spent, or no card is left)."""
        if not self.active:
            return None
        slot = self.rng.randrange(len(self.active))
        p = self.purses[self.active[slot]]
        amount = FARES_FEN[self.rng.randrange(len(FARES_FEN))]
        if amount > p.balance_fen or p.counter > MAX_COUNTER:
            self.refused += 1
            return None
        after = p.balance_fen - amount
        tac = self.tacs.tac(p.card_no, amount, COMPOUND_PURCHASE, terminal_id_bytes(terminal_id), terminal_seq, when)
        if forge:
            # A forger's record: a purchase the card never made, so the card's state stays;
            # the card is then blocked (it leaves the ride).
            tac = bytes(b ^ 0x5A for b in tac)
            self.forged.append((p.card_no, p.counter))
            self.active[slot] = self.active[-1]
            self.active.pop()
        else:
            p.balance_fen = after
            p.records += 1
            p.spent_fen += amount
        record = OfflineRecord(p.card_no, p.counter, amount, after, COMPOUND_PURCHASE, terminal_id, terminal_seq,
                               when, tac, kind, route)
        if not forge:
            p.counter += 1
        return Made(record, forge)


@dataclass(frozen=True)
class Batch:
    """One fixed upload batch: its seq, records and MAC never change (a resend is identical)."""

    terminal_id: int
    batch_seq: int
    records: tuple[OfflineRecord, ...]
    mac: bytes
    forged: tuple[bool, ...]
    due_ms: float  # when it was closed, on the run's clock: its latency counts from here


@dataclass
class ValidatorBook:
    """One validator's SAM side: its terminal seq, its batch seq, the records not yet in a
    batch. Batches close when full or when their oldest record waited ``linger_ms``."""

    terminal_id: int
    key: bytes  # the SAM's batch key: batch_key(batch master key, terminal id)
    kind: int
    route: int
    max_batch: int
    linger_ms: float
    terminal_seq: int = 0  # the last used
    batch_seq: int = 0  # the last used
    open: list[Made] = field(default_factory=list)
    first_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 1000:
            raise ValueError(f"offline batch must be 1..1000 records (the protocol's limit), got {self.max_batch}")

    def next_seq(self) -> int:
        self.terminal_seq += 1
        return self.terminal_seq

    def add(self, made: Made, at_ms: float) -> Batch | None:
        if not self.open:
            self.first_ms = at_ms
        self.open.append(made)
        return self.close(at_ms) if len(self.open) >= self.max_batch else None

    def due(self, now_ms: float) -> bool:
        return bool(self.open) and now_ms - self.first_ms >= self.linger_ms

    def close(self, due_ms: float) -> Batch | None:
        if not self.open:
            return None
        self.batch_seq += 1
        records = tuple(m.record for m in self.open)
        batch = Batch(self.terminal_id, self.batch_seq, records,
                      batch_mac(self.key, self.terminal_id, self.batch_seq, records),
                      tuple(m.forged for m in self.open), due_ms)
        self.open = []
        return batch


def forge_times_ms(n: int, duration_ms: float) -> list[float]:
    """When the ``n`` forged records are due: spread evenly over the run's middle."""
    return [duration_ms * (k + 1) / (n + 1) for k in range(max(n, 0))]


__all__ = ["FARES_FEN", "VALIDATOR_FIRST_ID", "Batch", "CardDeck", "CardPurse", "CardTacs", "DtkCache", "Made",
           "ValidatorBook", "WhenCache", "forge_times_ms", "is_validator", "validator_ids", "when_at"]
