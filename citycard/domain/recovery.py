"""The pure part of a shard's recovery: rebuild its ledger from the record, fed in order
(cards, the snapshot's card states, watermarks, then the journal rows). Postgres feeds it in
``persistence/recovery.py``; the simulation feeds it from its in-memory store."""

from collections.abc import Iterable
from dataclasses import dataclass

from .cards import CardState, restore_card
from .ledger import Ledger
from .taps import JournalRow


@dataclass(frozen=True)
class RecoveryReport:
    shard_id: int
    cards: int
    snapshot_lsn: int
    head_lsn: int
    rows_replayed: int  # rows whose effect was applied on top of the snapshot
    rows_remembered: int  # rows read only to refill the dedupe memory
    mismatches: int  # replayed rows whose balance_after disagreed with the rebuilt balance
    states: int = 0  # stored card states read, superseded ones included: the log's size


def replay_start(snapshot_lsn: int, head_lsn: int, dedupe_limit: int) -> int:
    """The journal is read after this lsn: from the snapshot, or earlier to refill the dedupe
    memory with the newest ``dedupe_limit`` rows. Older rows count only as watermarks."""
    return max(0, min(snapshot_lsn, head_lsn - dedupe_limit))


class Rebuild:
    """The pure part of recovery, fed the record in this order: cards, the snapshot's card
    states, the watermarks of rows up to ``start``, then every row after ``start`` by lsn.
    ``load_ledger`` feeds it from Postgres; the simulation from its in-memory store.

    A snapshot stores its cards in several transactions, then its mark: a card's stored state
    may be newer than the mark (a snapshot that did not finish). A row changes a card only if
    it is newer than both the mark and that card's state."""

    def __init__(self, ledger: Ledger, snapshot_lsn: int, head_lsn: int) -> None:
        self.ledger = ledger
        self.snapshot_lsn = snapshot_lsn
        self.head_lsn = head_lsn
        self.start = replay_start(snapshot_lsn, head_lsn, ledger.dedupe_limit)
        self.replayed = self.remembered = self.mismatches = 0
        self.ahead: dict[int, int] = {}  # card_no -> its state's lsn, where past the mark
        self.states = 0  # stored states read, superseded ones included
        self._last_state_lsn = 0
        ledger.lsn = snapshot_lsn

    def add_cards(self, cards: Iterable[CardState]) -> None:
        for card in cards:
            self.ledger.add_card(card)

    def restore_snapshot(self, states: Iterable[tuple[int, int, bytes]]) -> None:
        """(card_no, as_of_lsn, state) of every stored card state, in as_of_lsn order."""
        for card_no, as_of_lsn, state in states:
            self.restore_state(card_no, as_of_lsn, state)

    def restore_state(self, card_no: int, as_of_lsn: int, state: bytes) -> None:
        """One stored card state, as of the mark or later. States come in as_of_lsn order, so a
        card's newest is restored last, over its older ones (the log keeps several until compacted)."""
        if as_of_lsn < self._last_state_lsn:
            raise ValueError(f"card states out of lsn order: {as_of_lsn} after {self._last_state_lsn}")
        self._last_state_lsn = as_of_lsn
        self.states += 1
        card = self.ledger.cards.get(card_no)
        if card is not None:
            restore_card(card, state)
            if as_of_lsn > self.snapshot_lsn:  # in lsn order: a later state of the card is past it too
                self.ahead[card_no] = as_of_lsn

    def watermarks(self, highest: Iterable[tuple[int, int]]) -> None:
        """(terminal_id, max seq) over rows up to ``start``: older than the dedupe memory, their
        seqs must still never be charged again."""
        for terminal_id, max_seq in highest:
            self.ledger.raise_watermark(terminal_id, max_seq)

    def row(self, row: JournalRow) -> None:
        effect = row.lsn > self.snapshot_lsn and row.lsn > self.ahead.get(row.card_no, 0)
        self.ledger.replay(row, apply_effect=effect)
        if effect:
            self.replayed += 1
            card = self.ledger.cards.get(row.card_no)
            if card is not None and card.purses[0] != row.balance_after_fen:
                self.mismatches += 1
        else:
            self.remembered += 1

    def report(self) -> "RecoveryReport":
        return RecoveryReport(self.ledger.shard_id, len(self.ledger.cards), self.snapshot_lsn, self.head_lsn,
                              self.replayed, self.remembered, self.mismatches, self.states)
