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

A seq a shard says it decided for another card (DUPLICATE_SEQ) is not forgotten: its claim
becomes a marker of that shard (a negative value, -1 - shard), which lets through only cards
that shard decides (it answers the seq's owner its outcome, any other card DUPLICATE_SEQ) and
refuses the rest here; forgetting it would let a card of another shard have the seq decided
a second time.
"""

from collections.abc import Callable, Sequence
from typing import Protocol


class _Tap(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def card_no(self) -> int: ...


class SeqBook:
    __slots__ = ("per_terminal", "total", "size", "home", "_terminals")

    def __init__(self, per_terminal: int = 1024, total: int = 500_000,
                 home: Callable[[int], int] | None = None) -> None:
        """``home``: card -> the shard that decides it (-1: none of this city's, a visitor's);
        without it a marked seq refuses every card (router.Router.home gives it)."""
        if per_terminal < 1 or total < per_terminal:
            raise ValueError("need 1 <= per_terminal <= total")
        self.per_terminal = per_terminal
        self.total = total
        self.size = 0
        self.home = home
        # terminal_id -> {seq: card_no, or -1 - shard: a marker}; both dicts in use order, the
        # least recent first
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
            elif held != tap.card_no and (held > 0 or self._home(tap.card_no) != -1 - held):
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

    def release(self, terminal_id: int, seq: int, card_no: int, shard: int) -> None:
        """``shard`` decided the seq for another card (DUPLICATE_SEQ): this card's claim
        becomes that shard's marker, so the card the seq belongs to (which we do not know) is
        not refused here when its tap is retried, and a card of another shard still is."""
        seqs = self._terminals.get(terminal_id)
        if seqs is not None and seqs.get(seq) == card_no:
            seqs[seq] = -1 - shard  # in place: keeps its position in the trim order

    def _home(self, card_no: int) -> int:
        return self.home(card_no) if self.home is not None else -1

    def holds(self, terminal_id: int, seq: int) -> int | None:
        """The card a seq is claimed for (None: not held; negative: the marker of shard
        -1 - value)."""
        seqs = self._terminals.get(terminal_id)
        return None if seqs is None else seqs.get(seq)

    def __len__(self) -> int:
        return self.size
