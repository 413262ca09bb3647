"""The durable record of one shard: committed journal rows (lsn 1, 2, ...) and its snapshot."""

from citycard.domain.taps import JournalRow

from .model import Model


class Store:
    def __init__(self, shard_id: int, model: Model, *, fenced: bool = False) -> None:
        self.shard_id = shard_id
        self.fenced = fenced
        self.model = model
        self.rows: list[JournalRow] = []  # rows[i].lsn == i + 1 (the model checks it)
        self.snapshot_lsn = 0
        self.snapshot: dict[int, bytes] = {}  # card_no -> encoded card state at snapshot_lsn
        self.commits = 0

    @property
    def head_lsn(self) -> int:
        return len(self.rows)

    def commit(self, rows: list[JournalRow]) -> bool:
        """One transaction: all rows or none (the caller decides whether it fails). Fenced (the
        suggested fix, see README): the head update is conditional on the lsn the writer last
        saw, so a writer that is not the head's owner any more commits nothing."""
        if not rows:
            return True
        if self.fenced and rows[0].lsn != self.head_lsn + 1:
            return False
        self.model.on_commit(self, rows)
        self.rows.extend(rows)
        self.commits += 1
        return True

    def save_snapshot(self, lsn: int, states: dict[int, bytes]) -> None:
        if lsn > self.snapshot_lsn:  # recovery loads the newest
            self.snapshot_lsn, self.snapshot = lsn, states
