"""Group commit of the acquirer's remote-tap log (remote_taps): the visitors' taps answered
while one commit is under way wait for the next, and go in together, one INSERT and one
commit for all of them. Each caller returns only after the commit that holds its row (an
answer to a terminal means durable); a failed commit fails every caller of that batch (the
terminal retries; the row is idempotent on (terminal_id, seq)). The queue is bounded.

``log_remote_tap`` has store.log_remote_tap's signature: one writer per pool, made on the
first row and let go when it has nothing left, so no task outlives its rows."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .store import LinkTap

MAX_BATCH_ROWS = 500  # rows in one INSERT and commit
MAX_QUEUED_ROWS = 10_000  # beyond this a caller is refused at once (its tap answered RETRY)

_COLUMNS = ("issuer", "terminal_id", "seq", "card_no", "kind", "route", "tap_time_ms", "amount_fen", "result",
            "fare_fen", "balance_fen", "replay", "answered_ms")
_TYPES = ("text", "integer", "bigint", "bigint", "smallint", "integer", "bigint", "bigint", "integer", "bigint",
          "bigint", "boolean", "bigint")
# One statement: its own transaction, one commit. DO NOTHING also skips a key twice in one batch.
_INSERT = (f"INSERT INTO remote_taps ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
           + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_TYPES, 1))
           + ") ON CONFLICT (terminal_id, seq) DO NOTHING")

Row = tuple[str, int, int, int, int, int, int, int, int, int, int, bool, int]


class JournalFull(Exception):
    """More rows waiting than MAX_QUEUED_ROWS: nothing written, the caller's tap is retried."""


@dataclass
class RemoteTapJournal:
    pool: Any
    max_batch_rows: int = MAX_BATCH_ROWS
    max_queued_rows: int = MAX_QUEUED_ROWS
    commits: int = 0  # how many commits, and how many rows they held: the batching, for tests
    rows: int = 0
    _queue: list[tuple[Row, "asyncio.Future[None]"]] = field(default_factory=list)
    _drain: "asyncio.Task[None] | None" = None

    @property
    def idle(self) -> bool:
        return not self._queue and (self._drain is None or self._drain.done())

    def submit(self, row: Row) -> "asyncio.Future[None]":
        if len(self._queue) >= self.max_queued_rows:
            raise JournalFull(f"{len(self._queue)} remote-tap rows already waiting for a commit")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((row, fut))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_task(self._run())
        return fut

    async def _run(self) -> None:
        """Commit what is queued, batch after batch, until nothing is left."""
        try:
            while self._queue:
                batch = self._queue[:self.max_batch_rows]
                del self._queue[:self.max_batch_rows]
                try:
                    await self._commit([row for row, _ in batch])
                except asyncio.CancelledError:
                    self._fail(batch + self._queue, RuntimeError("remote-tap journal stopped"))
                    self._queue.clear()
                    raise
                except Exception as exc:  # noqa: BLE001 - this batch's callers fail; the next batch is tried
                    self._fail(batch, exc)
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            if _journals.get(id(self.pool)) is self and not self._queue:
                del _journals[id(self.pool)]  # nothing left: let go of it (and of the pool)

    @staticmethod
    def _fail(batch: list[tuple[Row, "asyncio.Future[None]"]], exc: BaseException) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    async def _commit(self, rows: list[Row]) -> None:
        columns = [list(col) for col in zip(*rows, strict=True)]
        await self.pool.execute(_INSERT, *columns)
        self.commits += 1
        self.rows += len(rows)


_journals: dict[int, RemoteTapJournal] = {}  # by id(pool); only while it has rows (_run lets go)


def journal_of(pool: Any) -> RemoteTapJournal:
    j = _journals.get(id(pool))
    if j is None or j.pool is not pool:
        j = _journals[id(pool)] = RemoteTapJournal(pool)
    return j


async def log_remote_tap(pool: Any, t: LinkTap, result: int, fare_fen: int, balance_fen: int, replay: bool,
                         now_ms: int) -> None:
    """The issuer's answer, durable on the acquirer's side too (a retry keeps the first row),
    committed with whatever other rows are waiting."""
    await journal_of(pool).submit((t.issuer, t.terminal_id, t.seq, t.card_no, t.kind, t.route, t.time_ms,
                                   t.amount_fen, result, fare_fen, balance_fen, replay, now_ms))


__all__ = ["MAX_BATCH_ROWS", "MAX_QUEUED_ROWS", "JournalFull", "RemoteTapJournal", "journal_of", "log_remote_tap"]
