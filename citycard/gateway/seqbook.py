"""Which card each recent (terminal, seq) was first sent for, at this gateway.

A shard remembers the seqs it decided, but a seq reused for a card of ANOTHER shard would be
decided there again. The gateway sees every tap of a connection before it picks the shard,
so it keeps the card each recent seq was claimed for and answers DUPLICATE_SEQ to a tap that
names another card (docs/protocol.md 7.4). It never answers SEQ_TOO_OLD and never refuses a
seq it does not hold: a forgotten seq goes to its shard as before, so an offline backlog of
old seqs, or a BUSY retry that comes after later seqs, is decided by the shard.

Bounded and sparse: at most ``per_terminal`` seqs a terminal, an eighth more between trims
(the oldest claimed go first), and ``total`` seqs in all (the least recently tapping
terminal goes first, whole); about 105 bytes a seq, so the defaults (1024, 500,000) hold
under 55 MB. Nothing is allocated for a terminal before its first tap.
"""

from collections.abc import Sequence
from typing import Protocol


class _Tap(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def card_no(self) -> int: ...


class SeqBook:
    __slots__ = ("per_terminal", "total", "size", "_terminals")

    def __init__(self, per_terminal: int = 1024, total: int = 500_000) -> None:
        if per_terminal < 1 or total < per_terminal:
            raise ValueError("need 1 <= per_terminal <= total")
        self.per_terminal = per_terminal
        self.total = total
        self.size = 0
        # terminal_id -> {seq: card_no}; both dicts in use order, the least recent first
        self._terminals: dict[int, dict[int, int]] = {}

    def claim(self, terminal_id: int, taps: Sequence[_Tap]) -> list[int]:
        """Claim each tap's seq for its card; returns the indexes of taps whose seq this
        gateway holds for another card (answer DUPLICATE_SEQ). A seq held for the same card
        is a retry: it goes to the shard, which answers the first outcome."""
        terminals = self._terminals
        seqs = terminals.pop(terminal_id, None)
        if seqs is None:
            seqs = {}
        terminals[terminal_id] = seqs  # now the most recent
        refused: list[int] = []
        added = 0
        for i, tap in enumerate(taps):
            held = seqs.get(tap.seq)
            if held is None:
                seqs[tap.seq] = tap.card_no
                added += 1
            elif held != tap.card_no:
                refused.append(i)
        if added:
            # trimmed in steps of an eighth, so a tap at a time does not walk the dict each time
            over = len(seqs) - self.per_terminal if len(seqs) > self.per_terminal + self.per_terminal // 8 else 0
            if over > 0:
                it = iter(seqs)
                for seq in [next(it) for _ in range(over)]:  # O(over), not O(len): a tap at a time
                    del seqs[seq]
                added -= over
            self.size += added
            while self.size > self.total:
                oldest = next(iter(terminals))
                self.size -= len(terminals.pop(oldest))
        return refused

    def release(self, terminal_id: int, seq: int, card_no: int) -> None:
        """The shard decided the seq for another card (DUPLICATE_SEQ): forget this card's
        claim, so the card it belongs to is not refused here when its tap is retried."""
        seqs = self._terminals.get(terminal_id)
        if seqs is not None and seqs.get(seq) == card_no:
            del seqs[seq]
            self.size -= 1

    def holds(self, terminal_id: int, seq: int) -> int | None:
        """The card a seq is claimed for (None: not held)."""
        seqs = self._terminals.get(terminal_id)
        return None if seqs is None else seqs.get(seq)

    def __len__(self) -> int:
        return self.size
