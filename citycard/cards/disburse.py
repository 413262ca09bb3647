"""The disbursement runner: credits one programme's items for one period through the shards.

The promise is at most one credit per (programme, period, holder), however often a run is
stopped, crashes or is started again. It rests on three things: an item's card is fixed when
the item is made; its credit's key is ``disb:{programme}:{period}:{holder}``; and the card's
shard applies a key once, answering a resend from its memory or its journal. So resuming is
simply sending every item still pending again; whatever the shard answers is recorded.

Items stream by keyset pagination, go to each shard in batches of ``api.disbursement_batch``
with a few calls in flight, and their results are recorded in bulk (UPDATE ... FROM unnest).
A shard call is retried by ``ShardClient``'s policy alone (the same keys: never a second
credit); past its deadline the run fails, to be resumed.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from ..actors.shard_client import ShardClient
from ..domain.ops import Credit
from ..domain.results import Result
from ..persistence import disbursements as store
from ..persistence import programmes as records

log = logging.getLogger(__name__)

PENDING, CREDITED, REFUSED = 0, 1, 2
Outcome = Literal["pending", "credited", "refused"]
STATE_NAMES: dict[int, Outcome] = {PENDING: "pending", CREDITED: "credited", REFUSED: "refused"}
MAX_ACTIVE_RUNS = 2  # runs in progress in one API process; each holds one pool connection
# (recording and the advisory lock) and borrows another now and then to read a page
SHARD_INFLIGHT_CALLS = 3  # credit batches outstanding per shard
BATCHES_AHEAD = 2  # batches read and waiting per shard, so a shard never waits for a page
RECORD_QUEUE_BATCHES = 8  # answered batches waiting to be recorded before senders wait
RECORD_MERGE_BATCHES = 4  # answered batches recorded by one statement
FINISH_TIMEOUT_S = 5.0

# Why an item was refused, by the shard's result (None: refused before anything was sent).
REFUSAL_REASONS: dict[int | None, str] = {
    None: "no live card: the holder had no card that is not cancelled when the item was made",
    int(Result.CARD_CANCELLED): "the card was cancelled or replaced after the item was made",
    int(Result.CARD_UNKNOWN): "the card is unknown to its shard",
    int(Result.BAD_TAP): "the shard refused the credit as malformed (purse or amount)",
    int(Result.DUPLICATE_SEQ): "the credit's key was already used for a different credit",
}


def refusal_reason(result: int | None) -> str:
    if result in REFUSAL_REASONS:
        return REFUSAL_REASONS[result]
    return f"refused by the card's shard: {result_name(REFUSED, result)}"


def result_name(state: int, result: int | None) -> str:
    if result is None:
        return "PENDING" if state == PENDING else "NO_LIVE_CARD"
    return Result(result).name if result in Result._value2member_map_ else str(result)


Chunk = tuple[list[int], list[int], list[int]]  # holder ids, card numbers, amounts (fen), in step
Answered = tuple[list[int], list[int]]  # holder ids, the shard's results, in step


@dataclass(frozen=True)
class Terms:
    """What every credit of a programme carries; fixed when the programme is made."""

    programme_id: int
    purse: int
    amount_fen: int
    until_ms: int
    categories: tuple[str, ...]


def terms_of(row: Any) -> Terms:
    """A programme's terms from its row (or any row with its columns)."""
    return Terms(row["programme_id"], row["purse"], row["amount_fen"], row["until_ms"],
                 tuple(row["merchant_categories"]))


# -- the runner ------------------------------------------------------------------------------

class Runner:
    """One run of one programme for one period, as an asyncio task of this process."""

    def __init__(self, shards: ShardClient, pool: asyncpg.Pool, batch: int, run_id: int, terms: Terms,
                 period: str, resumed: bool) -> None:
        self.shards = shards
        self.pool = pool
        self.run_id = run_id
        self.terms = terms
        self.period = period
        self.resumed = resumed
        self.batch = batch
        self.task: asyncio.Task[None] | None = None
        self.sent = 0  # credits sent by this runner (replays included)
        self.fetch_s = self.record_s = 0.0  # time Postgres took to read pages, record results
        self.stopped_by_operator = False

    def start(self) -> "asyncio.Task[None]":
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"disbursement-run-{self.run_id}")
        return self.task

    @property
    def live(self) -> bool:
        return self.task is not None and not self.task.done()

    async def run(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                if not await store.lock_run(conn, self.run_id):
                    raise RuntimeError("another process is running this run")
                t0 = time.perf_counter()
                made = await store.prepare_items(conn, self.run_id, self.terms.programme_id, self.period,
                                                 self.terms.amount_fen, self.resumed)
                prepare_s = time.perf_counter() - t0
                await self._stream(conn)
            await self._finish("done", "")
            log.info("run %s done: %s new items in %.2f s; %s credits sent in %.2f s; Postgres reads %.2f s,"
                     " records %.2f s", self.run_id, made, prepare_s, self.sent,
                     time.perf_counter() - t0 - prepare_s, self.fetch_s, self.record_s)
        except asyncio.CancelledError:
            # An operator's stop stays stopped; any other end (a shutdown) leaves the run
            # "running" in the record, for resume_interrupted to pick up at the next start.
            if self.stopped_by_operator:
                await self._finish("stopped", "stopped by an operator")
            raise
        except Exception as exc:  # noqa: BLE001 - a run that cannot go on is failed, to be resumed
            cause = _first_error(exc)
            log.error("disbursement run %s failed: %r", self.run_id, cause)
            await self._finish("failed", repr(cause)[:500])

    async def _finish(self, state: str, error: str) -> None:
        # Best effort and shielded: if it is lost, GET shows the run as interrupted.
        try:
            async with asyncio.timeout(FINISH_TIMEOUT_S):
                await asyncio.shield(records.finish_run(self.pool, self.run_id, state, error))
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001
            log.warning("run %s: could not record state %s: %r", self.run_id, state, exc)

    async def _stream(self, conn: asyncpg.Connection) -> None:
        """Reader -> a queue of batches per shard -> a few senders per shard -> recorder. Each
        queue is bounded, so a slow shard or a slow Postgres holds the others back."""
        n_shards = self.shards.n_shards
        ready: list[asyncio.Queue[Chunk | None]] = [asyncio.Queue(BATCHES_AHEAD) for _ in range(n_shards)]
        answered: asyncio.Queue[Answered | None] = asyncio.Queue(RECORD_QUEUE_BATCHES)
        async with asyncio.TaskGroup() as tg:
            senders = [tg.create_task(self._send_loop(q, answered))
                       for q in ready for _ in range(SHARD_INFLIGHT_CALLS)]
            recorder = tg.create_task(self._record_loop(conn, answered))
            await self._read_loop(ready)
            for q in ready:
                for _ in range(SHARD_INFLIGHT_CALLS):
                    await q.put(None)
            for t in senders:
                await t
            await answered.put(None)
            await recorder

    async def _read_loop(self, ready: "list[asyncio.Queue[Chunk | None]]") -> None:
        """Pending items by keyset pagination, cut into batches per shard."""
        pid, period, batch = self.terms.programme_id, self.period, self.batch
        # per shard: holder ids, card numbers and amounts not yet queued, in step
        bufs: list[Chunk] = [([], [], []) for _ in ready]
        after = 0
        while True:
            t0 = time.perf_counter()
            # a pool connection, not the run's: recording results goes on meanwhile
            groups = await store.pending_page(self.pool, pid, period, after, batch * len(ready))
            self.fetch_s += time.perf_counter() - t0
            for shard, holders, cards, amounts, last in groups:
                buf = bufs[shard]
                buf[0].extend(holders)
                buf[1].extend(cards)
                buf[2].extend(amounts)
                after = max(after, last)
            for s, (holders, cards, amounts) in enumerate(bufs):
                while len(holders) >= batch or (holders and not groups):
                    chunk = (holders[:batch], cards[:batch], amounts[:batch])
                    del holders[:batch], cards[:batch], amounts[:batch]
                    await ready[s].put(chunk)
            if not groups:
                return

    async def _send_loop(self, ready: "asyncio.Queue[Chunk | None]",
                         answered: "asyncio.Queue[Answered | None]") -> None:
        t = self.terms
        prefix, purse, until_ms, categories = f"disb:{t.programme_id}:{self.period}:", t.purse, t.until_ms, t.categories
        while (chunk := await ready.get()) is not None:
            holders, cards, amounts = chunk
            ops = [Credit(f"{prefix}{h}", c, purse, a, until_ms, categories)
                   for h, c, a in zip(holders, cards, amounts, strict=True)]
            # The client's policy retries a failed call (same keys); ShardUnavailable fails the run.
            outcomes = await self.shards.apply_ops(ops, with_views=False)
            self.sent += len(ops)
            await answered.put((holders, [o.result for o in outcomes]))

    async def _record_loop(self, conn: asyncpg.Connection, answered: "asyncio.Queue[Answered | None]") -> None:
        done = False
        while not done:
            item = await answered.get()
            holders: list[int] = []
            results: list[int] = []
            merged = 0
            while item is not None:
                holders += item[0]
                results += item[1]
                merged += 1
                if merged >= RECORD_MERGE_BATCHES or answered.empty():
                    break
                item = answered.get_nowait()
            done = item is None
            if holders:
                t0 = time.perf_counter()
                await store.record_results(conn, self.run_id, self.terms.programme_id, self.period, holders,
                                           results)
                self.record_s += time.perf_counter() - t0


def _first_error(exc: BaseException) -> BaseException:
    """The error that stopped a task group, rather than the group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = next((e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)), exc.exceptions[0])
    return exc


# -- runs of this process --------------------------------------------------------------------

class Runs:
    """The runs in progress in one API process (at most ``MAX_ACTIVE_RUNS``), and what their
    runners need: the shards, the pool, the batch size."""

    def __init__(self, shards: ShardClient, pool: asyncpg.Pool, batch: int) -> None:
        self.shards = shards
        self.pool = pool
        self.batch = batch
        self._runners: dict[int, Runner] = {}
        self.lock = asyncio.Lock()  # starting a run checks and registers in one step

    def live(self, run_id: int) -> Runner | None:
        r = self._runners.get(run_id)
        return r if r is not None and r.live else None

    def has_room(self) -> bool:
        self._runners = {k: r for k, r in self._runners.items() if r.live}
        return len(self._runners) < MAX_ACTIVE_RUNS

    def start(self, run_id: int, terms: Terms, period: str, resumed: bool) -> None:
        runner = Runner(self.shards, self.pool, self.batch, run_id, terms, period, resumed)
        self._runners[run_id] = runner
        runner.start()

    async def stop(self, run_id: int, by_operator: bool = True) -> bool:
        """Stop a run now. Credits already sent may still be applied; they stay pending here
        and a resume records them (as replays) without crediting again."""
        r = self.live(run_id)
        if r is None or r.task is None:
            return False
        r.stopped_by_operator = by_operator
        r.task.cancel()
        await asyncio.gather(r.task, return_exceptions=True)
        return True

    async def close(self) -> None:
        """Stop every run for a shutdown: they stay "running" in the record and
        ``resume_interrupted`` starts them again with the next API."""
        for run_id in list(self._runners):
            await self.stop(run_id, by_operator=False)

    async def resume_interrupted(self) -> list[int]:
        """Start again every run the record says is running (once the API is up after a restart)."""
        rows = await records.running_runs(self.pool)
        started = []
        async with self.lock:
            for r in rows:
                if self.live(r["run_id"]) is None and self.has_room():
                    self.start(r["run_id"], terms_of(r), r["period"], resumed=True)
                    started.append(r["run_id"])
        return started
