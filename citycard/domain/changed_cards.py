"""Which of a shard's cards changed since the last snapshot, and the snapshot in progress.

A snapshot writes only the cards changed since the one before, so its cost follows the taps
since then, not the size of the city. It is taken as of one lsn but encoded a slice at a time
while taps go on: a card that a tap or op is about to change is encoded first (copy on write,
``before_change``), so every encoded state is as of the snapshot's lsn.
"""

from __future__ import annotations

from .cards import CardState, encode_card

SnapshotRow = tuple[int, int, bytes]  # (card_no, money over all purses, encoded state)


def snapshot_row(card: CardState) -> SnapshotRow:
    return card.card_no, sum(card.purses), encode_card(card)


class ChangedCards:
    """Kept by the Ledger (``Ledger.snapshots``) over its cards dict, which it never replaces."""

    __slots__ = ("_cards", "dirty", "pending", "_rows", "_changed")

    def __init__(self, cards: dict[int, CardState]) -> None:
        self._cards = cards
        self.dirty: set[int] = set()  # changed since the last snapshot began
        # the snapshot in progress: cards still to encode as of its lsn (None: no snapshot)
        self.pending: set[int] | None = None
        self._rows: list[SnapshotRow] = []
        self._changed: set[int] = set()

    def __len__(self) -> int:
        return len(self.dirty)

    def begin(self) -> int:
        """Start a snapshot, as of the ledger's lsn now, of the cards changed since the last one;
        returns how many. Encode them with ``step`` while taps go on, then ``finish``."""
        if self.pending is not None:
            raise RuntimeError("a snapshot is already in progress")
        self.pending, self.dirty = self.dirty, set()
        self._changed = set(self.pending)
        self._rows = []
        return len(self._changed)

    def step(self, max_cards: int) -> bool:
        """Encode up to ``max_cards`` more; True once all are."""
        pending = self.pending
        assert pending is not None, "no snapshot in progress"
        rows, cards = self._rows, self._cards
        for _ in range(min(max_cards, len(pending))):
            c = cards.get(pending.pop())
            if c is not None:
                rows.append(snapshot_row(c))
        return not pending

    def finish(self) -> tuple[list[SnapshotRow], set[int]]:
        """The rows of each changed card as of the snapshot's lsn, and the set of those cards:
        hand it to ``restore`` if the snapshot is not stored."""
        assert self.pending is not None and not self.pending, "the snapshot is not encoded yet"
        rows, changed = self._rows, self._changed
        self.pending, self._rows, self._changed = None, [], set()
        return rows, changed

    def abandon(self) -> None:
        """A snapshot stopped before it finished: its cards go into the next one."""
        if self.pending is not None:
            self.restore(self._changed)
            self.pending, self._rows, self._changed = None, [], set()

    def take(self) -> tuple[list[SnapshotRow], set[int]]:
        """A whole snapshot in one go: ``begin``, every step, ``finish``."""
        self.begin()
        self.step(len(self._changed))
        return self.finish()

    def restore(self, changed: set[int]) -> None:
        """A snapshot of ``changed`` was not stored: the next one writes them again."""
        self.dirty |= changed

    def before_change(self, card_no: int) -> None:
        """A tap or op is about to change ``card_no``, still pending: encode it as it is now."""
        assert self.pending is not None
        self.pending.discard(card_no)
        c = self._cards.get(card_no)
        if c is not None:
            self._rows.append(snapshot_row(c))
