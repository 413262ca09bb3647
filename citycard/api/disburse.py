"""The disbursement runner: credits one programme's items for one period through the shards.

The promise is at most one credit per (programme, period, holder), however often a run is
stopped, crashes or is started again. It rests on three things: an item's card is fixed when
the item is made; its credit's key is ``disb:{programme}:{period}:{holder}``; and the card's
shard applies a key once, answering a resend from its memory or its journal. So resuming is
simply sending every item still pending again; whatever the shard answers is recorded.

Items stream by keyset pagination, go to each shard in batches of ``api.disbursement_batch``
with a few calls in flight, and their results are recorded in bulk (UPDATE ... FROM unnest).
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..domain.ops import Credit, OpOutcome
from ..domain.results import Result
from .context import ApiContext

log = logging.getLogger(__name__)

PENDING, CREDITED, REFUSED = 0, 1, 2
STATE_NAMES = {PENDING: "pending", CREDITED: "credited", REFUSED: "refused"}
MAX_ACTIVE_RUNS = 2  # runs in progress in one API process; each holds one pool connection
# (recording and the advisory lock) and borrows another now and then to read a page
SHARD_INFLIGHT_CALLS = 3  # credit batches outstanding per shard
BATCHES_AHEAD = 2  # batches read and waiting per shard, so a shard never waits for a page
RECORD_QUEUE_BATCHES = 8  # answered batches waiting to be recorded before senders wait
RECORD_MERGE_BATCHES = 4  # answered batches recorded by one statement
SEND_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # a restarting shard gets ~30 s
FINISH_TIMEOUT_S = 5.0
PREPARE_WORK_MEM = "64MB"  # making a million items sorts them once
ANALYZE_AFTER_ROWS = 10_000  # rows added at once after which the planner needs new statistics
# pg advisory lock keys of runs: one runner per run across API processes
_LOCK_BASE = 0x0D15B << 40

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


@dataclass(frozen=True)
class Terms:
    """What every credit of a programme carries; fixed when the programme is made."""

    programme_id: int
    purse: int
    amount_fen: int
    until_ms: int
    categories: tuple[str, ...]


# -- items and counters -----------------------------------------------------------------------

# Beneficiaries not yet in this period get an item, with the holder's newest live card fixed
# now; existing items keep theirs, which is what makes a resend land on the same shard. A hash
# join and one sort (an index probe per holder took 8 s for a million); the items go in in
# holder order, the order the run reads them. No ON CONFLICT: the run's advisory lock and NOT
# EXISTS leave no existing key, speculative insertion doubled the insert (4.2 s against 2.0 s),
# and a conflict would fail the run, never replace an item's card.
_MAKE_ITEMS = """
WITH made AS (
    INSERT INTO disbursement_items (programme_id, period, holder_id, card_no, shard_id, amount_fen, state)
    SELECT DISTINCT ON (b.holder_id) b.programme_id, $2, b.holder_id, c.card_no, c.shard_id,
           coalesce(b.amount_fen, $3), CASE WHEN c.card_no IS NULL THEN 2 ELSE 0 END
    FROM programme_beneficiaries b
    LEFT JOIN cards c ON c.holder_id = b.holder_id AND c.status <> 2
    WHERE b.programme_id = $1
      AND NOT EXISTS (SELECT 1 FROM disbursement_items i
                      WHERE i.programme_id = $1 AND i.period = $2 AND i.holder_id = b.holder_id)
    ORDER BY b.holder_id, c.issued_at DESC, c.card_no DESC
    RETURNING state)
UPDATE disbursement_runs SET total = total + (SELECT count(*) FROM made),
       refused = refused + (SELECT count(*) FROM made WHERE state = 2),
       resumed_done = credited + refused + (SELECT count(*) FROM made WHERE state = 2),
       resumed_at = now(), updated_at = now()
WHERE run_id = $4
RETURNING (SELECT count(*) FROM made)
"""

# A resumed run's counters are made again from its items (they move together, so this only
# heals what an operator changed by hand).
_RECOUNT = """
UPDATE disbursement_runs r SET total = c.total, credited = c.credited, refused = c.refused,
       credited_fen = c.credited_fen, resumed_done = c.credited + c.refused,
       resumed_at = now(), updated_at = now()
FROM (SELECT count(*) AS total, count(*) FILTER (WHERE state = 1) AS credited,
             count(*) FILTER (WHERE state = 2) AS refused,
             coalesce(sum(amount_fen) FILTER (WHERE state = 1), 0) AS credited_fen
      FROM disbursement_items WHERE programme_id = $2 AND period = $3) c
WHERE r.run_id = $1
"""

# The next page of pending items, as one row of arrays per shard (no Python loop per item).
_PAGE = """
SELECT shard_id, array_agg(holder_id ORDER BY holder_id), array_agg(card_no ORDER BY holder_id),
       array_agg(amount_fen ORDER BY holder_id), max(holder_id)
FROM (SELECT holder_id, card_no, shard_id, amount_fen FROM disbursement_items
      WHERE programme_id = $1 AND period = $2 AND holder_id > $3 AND state = 0
      ORDER BY holder_id LIMIT $4) p
GROUP BY shard_id
"""

# Only items still pending change (a result is never overwritten), and the run's counters
# move in the same statement by exactly the rows that changed.
_RECORD = """
WITH u AS (
    UPDATE disbursement_items i SET state = CASE WHEN r.result = 0 THEN 1 ELSE 2 END, result = r.result
    FROM unnest($3::bigint[], $4::smallint[]) AS r(holder_id, result)
    WHERE i.programme_id = $1 AND i.period = $2 AND i.holder_id = r.holder_id AND i.state = 0
    RETURNING i.state, i.amount_fen)
UPDATE disbursement_runs SET
    credited = credited + (SELECT count(*) FROM u WHERE state = 1),
    refused = refused + (SELECT count(*) FROM u WHERE state = 2),
    credited_fen = credited_fen + (SELECT coalesce(sum(amount_fen), 0) FROM u WHERE state = 1),
    updated_at = now()
WHERE run_id = $5
"""


async def prepare_items(conn: asyncpg.Connection, run_id: int, terms: Terms, period: str, resumed: bool) -> int:
    """Make the period's missing items (counted into the run); returns how many."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL work_mem = '{PREPARE_WORK_MEM}'")  # the sort in memory, not on disk
        made = int(await conn.fetchval(_MAKE_ITEMS, terms.programme_id, period, terms.amount_fen, run_id))
        if resumed:
            await conn.execute(_RECOUNT, run_id, terms.programme_id, period)
    if made >= ANALYZE_AFTER_ROWS:
        # Without fresh statistics the planner takes the new items for a handful and joins
        # each recorded batch to all of them: quadratic (a 200,000 run took minutes).
        await conn.execute("ANALYZE disbursement_items")
    return made


# -- the runner ------------------------------------------------------------------------------

class Runner:
    """One run of one programme for one period, as an asyncio task of this process."""

    def __init__(self, ctx: ApiContext, run_id: int, terms: Terms, period: str, resumed: bool) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.terms = terms
        self.period = period
        self.resumed = resumed
        self.batch = ctx.settings.api.disbursement_batch
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
            async with self.ctx.pool.acquire() as conn:
                # Held for the connection's life; released by the pool's reset or a dead session.
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_BASE + self.run_id):
                    raise RuntimeError("another process is running this run")
                t0 = time.perf_counter()
                made = await prepare_items(conn, self.run_id, self.terms, self.period, self.resumed)
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
        async def write() -> None:
            await self.ctx.pool.execute(
                "UPDATE disbursement_runs SET state = $2, error = $3, updated_at = now(),"
                " finished_at = CASE WHEN $2 = 'done' THEN now() END WHERE run_id = $1",
                self.run_id, state, error)

        try:
            await asyncio.wait_for(asyncio.shield(write()), FINISH_TIMEOUT_S)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001
            log.warning("run %s: could not record state %s: %r", self.run_id, state, exc)

    async def _stream(self, conn: asyncpg.Connection) -> None:
        """Reader -> a queue of batches per shard -> a few senders per shard -> recorder. Each
        queue is bounded, so a slow shard or a slow Postgres holds the others back."""
        n_shards = self.ctx.shards.n_shards
        ready: list[asyncio.Queue[Chunk | None]] = [asyncio.Queue(BATCHES_AHEAD) for _ in range(n_shards)]
        answered: asyncio.Queue[tuple[list[int], list[int]] | None] = asyncio.Queue(RECORD_QUEUE_BATCHES)
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
            groups = await self.ctx.pool.fetch(_PAGE, pid, period, after, batch * len(ready))
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

    async def _send_loop(self, ready: "asyncio.Queue[Chunk | None]", answered: "asyncio.Queue[Any]") -> None:
        t = self.terms
        prefix, purse, until_ms, categories = f"disb:{t.programme_id}:{self.period}:", t.purse, t.until_ms, t.categories
        while (chunk := await ready.get()) is not None:
            holders, cards, amounts = chunk
            ops = [Credit(f"{prefix}{h}", c, purse, a, until_ms, categories)
                   for h, c, a in zip(holders, cards, amounts, strict=True)]
            outcomes = await self._apply(ops)
            self.sent += len(ops)
            await answered.put((holders, [o.result for o in outcomes]))

    async def _apply(self, ops: list[Credit]) -> list[OpOutcome]:
        """The shard's answers; a failed call is sent again (same keys: never a second credit)."""
        for delay_s in (*SEND_RETRY_DELAYS_S, None):
            try:
                return await self.ctx.run_ops(ops, with_views=False)
            except Exception as exc:  # noqa: BLE001 - timeouts, a dead or restarting actor
                if delay_s is None:
                    raise
                log.warning("run %s: shard call failed (%r); sending again in %s s", self.run_id, exc, delay_s)
                await asyncio.sleep(delay_s)
        raise AssertionError("unreachable")

    async def _record_loop(self, conn: asyncpg.Connection, answered: "asyncio.Queue[Any]") -> None:
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
                await conn.execute(_RECORD, self.terms.programme_id, self.period, holders, results, self.run_id)
                self.record_s += time.perf_counter() - t0


def _first_error(exc: BaseException) -> BaseException:
    """The error that stopped a task group, rather than the group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = next((e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)), exc.exceptions[0])
    return exc


# -- runs of this process --------------------------------------------------------------------

class Runs:
    """The runs in progress in this API process: at most ``MAX_ACTIVE_RUNS``."""

    def __init__(self) -> None:
        self._runners: dict[int, Runner] = {}
        self.lock = asyncio.Lock()  # starting a run checks and registers in one step

    def live(self, run_id: int) -> Runner | None:
        r = self._runners.get(run_id)
        return r if r is not None and r.live else None

    def has_room(self) -> bool:
        self._runners = {k: r for k, r in self._runners.items() if r.live}
        return len(self._runners) < MAX_ACTIVE_RUNS

    def start(self, runner: Runner) -> None:
        self._runners[runner.run_id] = runner
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


def runs_of(app: Any) -> Runs:
    runs: Runs | None = getattr(app.state, "disbursement_runs", None)
    if runs is None:
        runs = app.state.disbursement_runs = Runs()
    return runs


async def resume_interrupted(app: Any) -> list[int]:
    """Start again every run the record says is running (call once the API is up after a restart)."""
    ctx: ApiContext = app.state.ctx
    rows = await ctx.pool.fetch(
        "SELECT r.run_id, r.period, p.programme_id, p.purse, p.amount_fen, p.until_ms, p.merchant_categories"
        " FROM disbursement_runs r JOIN programmes p USING (programme_id) WHERE r.state = 'running'"
        " ORDER BY r.run_id")
    runs = runs_of(app)
    started = []
    async with runs.lock:
        for r in rows:
            if runs.live(r["run_id"]) is None and runs.has_room():
                runs.start(Runner(ctx, r["run_id"], terms_of(r), r["period"], resumed=True))
                started.append(r["run_id"])
    return started


def terms_of(row: Any) -> Terms:
    return Terms(row["programme_id"], row["purse"], row["amount_fen"], row["until_ms"],
                 tuple(row["merchant_categories"]))
