"""Group commit of journal rows: one append (one COPY and one commit) for everything queued,
in order.

``submit(rows)`` returns a future that resolves once those rows (and all submitted before
them) are committed. A failed commit fails every pending future and marks the writer broken:
the shard's memory is ahead of the record and must be rebuilt before it answers again.

It lives beside the shard shell, not in persistence/: it is the shard's commit discipline
(asyncio, so not domain/), and it knows no database. It is given an ``Append``, which stores
one group of records in one transaction or raises: ``persistence.journal.pg_append`` for
Postgres, an in-memory store that fails on purpose in tests/sim.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from ..errors import StoreError
from ..tasks import cancel_and_wait

_astuple = msgspec.structs.astuple
Append = Callable[[list[tuple[Any, ...]]], Awaitable[None]]  # rows as tuples, lsn order, one transaction


class JournalWriter:
    def __init__(self, append: Append, max_rows: int, commit_timeout_s: float | None = None) -> None:
        self._append = append
        self._max_rows = max_rows
        # Whatever the store: a group commit that takes longer fails (outcome unknown), the writer
        # breaks and the shard reloads, instead of holding every tap behind it.
        self._commit_timeout_s = commit_timeout_s
        self._queue: list[tuple[Sequence[Any], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.broken: BaseException | None = None
        self.committed_lsn = 0
        self.last_commit_ms = 0.0
        self.commits = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait([self._task])
        self._fail_pending(StoreError("journal writer closed"))

    @property
    def idle(self) -> bool:
        """No rows waiting: memory equals the committed record."""
        return not self._queue and not self._busy

    _busy = False

    def submit(self, rows: Sequence[Any]) -> "asyncio.Future[None]":
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken is not None:
            fut.set_exception(StoreError(f"journal writer is broken: {self.broken!r}"))
            return fut
        self._queue.append((rows, fut))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self.broken is None:
                take, n = 0, 0
                while take < len(self._queue) and (n == 0 or n + len(self._queue[take][0]) <= self._max_rows):
                    n += len(self._queue[take][0])
                    take += 1
                group = self._queue[:take]
                del self._queue[:take]
                self._busy = True
                try:
                    await self._commit(group)
                except Exception as exc:  # noqa: BLE001 - any store failure breaks the writer
                    self.broken = exc
                    err = StoreError(f"journal commit failed: {exc!r}")
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(err)
                    self._fail_pending(err)
                finally:
                    self._busy = False

    async def _commit(self, group: list[tuple[Sequence[Any], "asyncio.Future[None]"]]) -> None:
        records: list[Any] = []
        for rows, _ in group:
            records.extend(map(_astuple, rows))  # COPY takes sequences
        if records:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self._commit_timeout_s):
                    await self._append(records)
            except TimeoutError:
                raise StoreError(f"commit of lsn {records[0][0]}..{records[-1][0]} took over "
                                 f"{self._commit_timeout_s} s; outcome unknown") from None
            self.committed_lsn = records[-1][0]
            self.last_commit_ms = (time.perf_counter() - started) * 1000.0
            self.commits += 1
        for _, fut in group:
            if not fut.done():
                fut.set_result(None)

    def _fail_pending(self, err: BaseException) -> None:
        pending, self._queue = self._queue, []
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(err)
