"""Offline uploads, durable (docs/protocol.md section 15; docs/architecture.md).

One ``OfflineDesk`` per gateway process: connections hand it their uploads; it checks each
batch MAC at once and queues the batch (bounded). Its writer takes the queued batches (up to
``max_commit_records``) as a group: each record decided (domain/offline_book.py) against the
card's shadow, which the desk keeps in memory (an LRU of committed shadows; a card it lacks is
read from the journal); then, in the group's transaction, the records written by COPY (the
primary key the backstop of exactly once), cards hotlisted with an audit entry, one commit for
all of them (group commit), and the acks. Two groups overlap: one is decided (Python) while
the one before is written and committed (Postgres); the later one decides on the earlier one's
shadows and commits only after it (if it fails, the later one is decided again). The shadows'
offline_cards rows are written back in a group's transaction whenever the desk runs out of
work, and at least every ``write_back_s`` (docs/architecture.md, "the path of an offline
record").
"""

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from ..domain.epurse_crypto import PURCHASE_TYPES
from ..domain.offline import IssuerKeys, OfflineRecord, batch_key
from ..domain.offline_book import (
    CardShadow,
    Decision,
    OfflineCode,
    ShadowCache,
    TacKeys,
    accept_new,
    decide,
)
from ..gateway.metrics import Metrics
from ..persistence import audit, hotlist
from ..persistence import offline as store
from ..protocols.codes import ErrorCode
from ..protocols.messages import OfflineRecordItem
from ..protocols.offline import BAD_BATCH_MAC_MESSAGE, items_mac_ok, record_of, when_bcd
from ..tasks import cancel_and_wait

log = logging.getLogger(__name__)
OPERATOR, ROLE = "offline-host", "system"  # who the audit log names for automatic hotlisting
_CODE_NAMES = {int(c): c.name for c in OfflineCode}
YIELD_RECORDS = 500  # records decided between two turns of the event loop (~5 ms of work)
MAX_TRIES = 3  # a batch decided again (the group before it failed, another writer) at most this often
ISSUER_DIV = 10**11  # domain/cards.issuer_of: a card's issuer number is card_no // ISSUER_DIV


@dataclass(frozen=True, slots=True)
class Refusal:
    """A whole-batch answer: an ``error`` frame with this code, nothing journaled."""

    code: ErrorCode
    message: str


@dataclass(slots=True)
class _Job:
    terminal_id: int
    batch_seq: int
    items: Sequence[OfflineRecordItem]
    mac: bytes
    fut: "asyncio.Future[list[int] | Refusal]"
    order: int  # arrival: a batch decided again keeps its place
    codes: list[int] = field(default_factory=list)
    tries: int = 0


class _Retry(Exception):
    """The group is to be decided again (its jobs go back to the queue)."""


@dataclass(slots=True)
class _Group:
    """A group decided, its transaction open until ``commit`` settles it."""

    jobs: list[_Job]
    conn: Any = None
    tr: Any = None
    replies: list[tuple[_Job, "list[int] | Refusal", str]] = field(default_factory=list)
    changed: dict[int, CardShadow] = field(default_factory=dict)  # the shadows after it, uncommitted
    keys: dict[tuple[int, int], Any] = field(default_factory=dict)  # journaled by it: OfflineRecord | (item, tid)
    answers: dict[tuple[int, int], tuple[bytes, list[int]]] = field(default_factory=dict)  # its batches
    rows: Any = None  # store.write's lists
    visitors: list[tuple[Any, ...]] = field(default_factory=list)  # other issuers' records: store.write_visitors
    visitor_codes: list[tuple[list[int], int]] = field(default_factory=list)  # where each one's code is
    to_list: dict[int, tuple[OfflineCode, str, OfflineRecord, _Job]] = field(default_factory=dict)
    tac_failures: int = 0
    after: "_Group | None" = None  # decided on this one's uncommitted shadows: commits after it
    task: "asyncio.Task[bool] | None" = None


class OfflineDesk:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis | None, redis_prefix: str, issuer: IssuerKeys,
                 batch_master_key: bytes, metrics: Metrics, *, max_queue_records: int = 50_000,
                 max_commit_records: int = 10_000, tac_cache_cards: int = 100_000,
                 shadow_cache_cards: int = 500_000, max_dirty_cards: int = 100_000, write_back_s: float = 2.0,
                 clock: Callable[[], float] = time.perf_counter, own_issuer: int | None = None,
                 visitor_issuers: Iterable[int] = ()) -> None:
        # own_issuer None: every card is this host's (no visitors). Else a card of another issuer
        # in visitor_issuers is kept for its issuer's clearing file (FORWARDED); of any other
        # issuer, refused (UNKNOWN_ISSUER).
        self.own_issuer = own_issuer
        self.visitor_issuers = frozenset(visitor_issuers) - {own_issuer}
        self.pool = pool
        self.redis = redis
        self.prefix = redis_prefix
        self.tacs = TacKeys(issuer, tac_cache_cards)
        self.master = batch_master_key
        self.metrics = metrics
        self.max_queue = max_queue_records
        self.max_commit = max_commit_records
        self.clock = clock
        self.shadows = ShadowCache(shadow_cache_cards)  # committed shadows of the cards seen last
        self.max_dirty = max_dirty_cards
        self.write_back_s = write_back_s
        self._flushed_at = clock()
        self._keys: dict[int, bytes] = {}  # terminal id -> its batch key (an HMAC each: kept)
        self._queue: list[_Job] = []
        self._queued = 0
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._committing: set[asyncio.Task[bool]] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run())]

    async def stop(self) -> None:
        """Stop the writer; queued uploads are answered INTERNAL (not processed: resend). The
        offline_cards rows are then written up to date."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        await cancel_and_wait(list(self._committing))
        for job in self._queue:
            _settle(job.fut, Refusal(ErrorCode.INTERNAL, "gateway stopping: resend the batch"))
        self._queue.clear()
        self._queued = 0
        await self.flush()

    def batch_key(self, terminal_id: int) -> bytes:
        key = self._keys.get(terminal_id)
        if key is None:
            if len(self._keys) >= 100_000:
                self._keys.clear()
            key = self._keys[terminal_id] = batch_key(self.master, terminal_id)
        return key

    async def upload(self, terminal_id: int, batch_seq: int, items: Sequence[OfflineRecordItem],
                     mac: bytes) -> "list[int] | Refusal":
        """The codes of an upload once committed, or the whole batch's refusal."""
        started = self.clock()
        if not items_mac_ok(self.batch_key(terminal_id), terminal_id, batch_seq, items, mac):
            self.metrics.offline_batches.labels("bad_mac").inc()
            return Refusal(ErrorCode.BAD_BATCH_MAC, BAD_BATCH_MAC_MESSAGE)
        if not self._tasks or self._queued + len(items) > self.max_queue:
            self.metrics.offline_batches.labels("busy").inc()
            return Refusal(ErrorCode.INTERNAL, "offline uploads busy: resend the batch later")
        fut: asyncio.Future[list[int] | Refusal] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(terminal_id, batch_seq, items, bytes(mac), fut, next(self._order)))
        self._queued += len(items)
        self._wake.set()
        answer = await fut
        self.metrics.offline_latency.observe(self.clock() - started)
        return answer

    # -- the writer ----------------------------------------------------------------------------
    # One writer: it alone changes the shadows this desk keeps. It decides a group while the
    # group before it is written and committed (at most one in flight), on that group's
    # shadows; the group then commits after it, or is decided again if it failed.
    async def _run(self) -> None:
        prev: _Group | None = None
        while True:
            await self._wake.wait()
            while self._queue:
                jobs = self._take()
                if prev is not None and prev.task is not None and prev.task.done():
                    prev = None  # committed (its shadows in the cache) or failed (nothing of it kept)
                g = _Group(jobs, after=prev)
                try:
                    await self._prepare(g)
                except asyncio.CancelledError:
                    await self._release(g, None)
                    raise
                except Exception as exc:  # noqa: BLE001 - nothing committed: every batch may be resent
                    await self._release(g, exc)
                    continue
                g.task = asyncio.get_running_loop().create_task(self._commit(g))
                self._committing.add(g.task)
                g.task.add_done_callback(self._committing.discard)
                nxt: _Group | None = g
                if prev is not None and prev.task is not None:
                    await asyncio.wait([prev.task])  # at most one group in flight while the next is decided
                    if prev.task.cancelled() or not prev.task.result():
                        # g was decided on a group that failed: it fails too (and goes back to the
                        # queue); the next group is decided on committed shadows only.
                        await asyncio.wait([g.task])
                        nxt = None
                prev = nxt

    def _take(self) -> list[_Job]:
        group: list[_Job] = []
        n = 0
        while self._queue and (not group or n + len(self._queue[0].items) <= self.max_commit):
            job = self._queue.pop(0)
            group.append(job)
            n += len(job.items)
        self._queued -= n
        if not self._queue:
            self._wake.clear()
        return group

    async def commit(self, jobs: list[_Job]) -> bool:
        """Decide, journal and commit one group of uploads by itself (no overlap); settle its
        futures. Whether it committed."""
        g = _Group(jobs)
        try:
            await self._prepare(g)
        except Exception as exc:  # noqa: BLE001 - nothing committed
            await self._release(g, exc)
            return False
        return await self._commit(g)

    async def flush(self) -> None:
        """Write every shadow the offline_cards rows do not show yet (the desk's columns)."""
        back = self.shadows.take_dirty()
        if not back:
            return
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await store.write_back(conn, back)
        except BaseException:
            self.shadows.untake(back)
            raise
        self._flushed_at = self.clock()

    async def _prepare(self, g: _Group) -> None:
        """Open the group's transaction and decide every record of it (nothing written yet)."""
        g.conn = await self.pool.acquire()
        g.tr = g.conn.transaction()
        await g.tr.start()
        prev = g.after
        answered = await store.answered_batches(g.conn, [(j.terminal_id, j.batch_seq) for j in g.jobs])
        fresh: list[_Job] = []
        for job in g.jobs:
            key = (job.terminal_id, job.batch_seq)
            before = answered.get(key)
            if before is None:
                before = g.answers.get(key) or (prev.answers.get(key) if prev is not None else None)
            if before is not None:  # answered before, or sent twice in this group or the one before
                mac, codes = before
                if mac == job.mac:
                    g.replies.append((job, codes, "replayed"))
                else:
                    g.replies.append((job, Refusal(ErrorCode.BATCH_SEQ_REUSED,
                                                   f"batch_seq {job.batch_seq} was answered for other records"
                                                   ": resend them under a new batch_seq"), "seq_reused"))
                continue
            g.answers[key] = (job.mac, job.codes)
            fresh.append(job)
        await self._decide(g, fresh)
        for job in fresh:
            g.replies.append((job, job.codes, "acked"))

    async def _commit(self, g: _Group) -> bool:
        """Write the group and commit it after the group it was decided on; settle its futures.
        Whether it committed."""
        back: list[CardShadow] = []
        flushed = False
        hotlisted: list[tuple[int, OfflineCode]] = []
        try:
            if g.after is not None and g.after.task is not None and not await g.after.task:
                raise _Retry("the group before failed")
            conn = g.conn
            # Visitors first: a record whose key another record holds is answered COUNTER_REUSED
            # (in place: the batch's codes are written below). Not hotlisted: its issuer judges.
            for same, (codes, i) in zip(await store.write_visitors(conn, g.visitors), g.visitor_codes, strict=True):
                if not same:
                    codes[i] = int(OfflineCode.COUNTER_REUSED)
            await store.write(conn, *g.rows)
            hotlisted = [(card, code) for card, (code, reason, r, job) in sorted(g.to_list.items())
                         if await self._hotlist(conn, card, code, reason, r, job)]
            # The rows catch up with the shadows when the desk runs out of work (so they are
            # current whenever it is idle), and at least every write_back_s or max_dirty cards.
            flushed = (not self._queue or self.shadows.dirty + len(g.changed) >= self.max_dirty
                       or self.clock() - self._flushed_at >= self.write_back_s)
            if flushed:
                back = self.shadows.take_dirty()
                merged = {s.card_no: s for s in back}
                merged.update(g.changed)
                await store.write_back(conn, sorted(merged.values(), key=lambda s: s.card_no))
            await g.tr.commit()
        except asyncio.CancelledError:
            self.shadows.untake(back)
            await self._release(g, None)
            raise
        except Exception as exc:  # noqa: BLE001 - nothing committed: decided again or resent
            self.shadows.untake(back)
            if isinstance(exc, asyncpg.UniqueViolationError):
                # Another writer journaled a key this desk did not know of: its cards read again.
                self.shadows.evict({i.card for job in g.jobs for i in job.items})
                exc = _Retry(f"another writer: {exc}")
            await self._release(g, exc)
            return False
        # Committed: from now on the shadows are what this group made them.
        self.shadows.install(g.changed.values(), dirty=not flushed)
        if flushed:
            self._flushed_at = self.clock()
        await self.pool.release(g.conn)
        counts: dict[int, int] = {}
        for job, answer, outcome in g.replies:
            self.metrics.offline_batches.labels(outcome).inc()
            if outcome == "acked":
                for c in job.codes:
                    counts[c] = counts.get(c, 0) + 1
            _settle(job.fut, answer)
        for c, k in counts.items():
            self.metrics.offline_records.labels(_CODE_NAMES.get(c, str(c))).inc(k)
        if g.tac_failures:
            self.metrics.offline_tac_failures.inc(g.tac_failures)
        if g.rows[2]:
            self.metrics.offline_gaps.inc(len(g.rows[2]))
        for _card, code in hotlisted:
            self.metrics.offline_hotlisted.labels(code.name).inc()
        return True

    async def _release(self, g: _Group, exc: BaseException | None) -> None:
        """Roll the group back and give its connection back; its jobs go back to the queue
        (``_Retry``, a few times) or are answered INTERNAL (resend)."""
        conn, g.conn = g.conn, None
        if conn is not None:
            try:
                if g.tr is not None:
                    await g.tr.rollback()
            except Exception:  # noqa: BLE001, S110 - a broken connection: the pool replaces it
                pass
            finally:
                await self.pool.release(conn)
        if exc is None:  # stopping
            for job in g.jobs:
                _settle(job.fut, Refusal(ErrorCode.INTERNAL, "gateway stopping: resend the batch"))
            return
        again = [job for job in g.jobs if isinstance(exc, _Retry) and job.tries + 1 < MAX_TRIES]
        for job in again:
            job.tries += 1
        if again:
            self._queue = sorted(self._queue + again, key=lambda j: j.order)
            self._queued += sum(len(j.items) for j in again)
            self._wake.set()
        failed = [job for job in g.jobs if job not in again]
        if failed:
            log.warning("offline group of %d batches not committed: %r", len(g.jobs), exc)
            self.metrics.offline_batches.labels("failed").inc(len(failed))
        for job in failed:
            _settle(job.fut, Refusal(ErrorCode.INTERNAL, "not processed: resend the batch"))

    async def _shadows(self, g: _Group, cards: set[int]) -> tuple[dict[int, CardShadow], set[int]]:
        """Copies of the cards' shadows to decide on: as the group before left them, or from
        this desk's cache, or from the database for the cards it lacks (read now)."""
        out: dict[int, CardShadow] = {}
        missing: set[int] = set()
        get = self.shadows.get
        before = g.after.changed if g.after is not None else {}
        for c in cards:
            s = before.get(c) or get(c)
            if s is None:
                missing.add(c)
            else:
                out[c] = s.copy()
        if missing:
            out.update(await store.cold_shadows(g.conn, missing))
        return out, missing

    async def _decide(self, g: _Group, jobs: list[_Job]) -> None:
        own = self.own_issuer
        cards = {i.card for job in jobs for i in job.items if own is None or i.card // ISSUER_DIV == own}
        n = sum(len(j.items) for j in jobs)
        if n:
            self.metrics.offline_commit_records.observe(n)
        shadows, read_now = await self._shadows(g, cards)
        stale = await self._pass(g, jobs, shadows, read_now)
        if stale:
            # Loads only raise a card's loaded_fen, and another process makes them: a card this
            # desk kept that looks impossible gets its loaded_fen read again, and the group is
            # decided again, before it is called so.
            loaded = await store.loaded(g.conn, stale)
            shadows, _ = await self._shadows(g, cards)
            for c, fen in loaded.items():
                if c in shadows:
                    shadows[c].loaded_fen = fen
            stale = await self._pass(g, jobs, shadows, cards)
        assert not stale

    async def _pass(self, g: _Group, jobs: list[_Job], shadows: dict[int, CardShadow], read_now: set[int]
                    ) -> set[int]:
        """Every record decided against ``shadows`` (changed in place) into ``g``; the cards
        kept from before (not in ``read_now``) that some record found impossible, if any: then
        ``g`` is to be decided again."""
        prev_keys = g.after.keys if g.after is not None else {}
        # What may be journaled already under a record's key is looked up (a retry, a gap fill).
        maybe = {(i.card, i.counter) for job in jobs for i in job.items
                 if (sh := shadows.get(i.card)) is not None and sh.may_hold(i.counter)}
        journaled: dict[tuple[int, int], OfflineRecord] = await store.journaled(g.conn, sorted(maybe))
        for k in maybe:
            if k not in journaled and k in prev_keys:  # the group before journaled it, uncommitted
                v = prev_keys[k]
                journaled[k] = v if isinstance(v, OfflineRecord) else record_of(*v)
        records: list[tuple[Any, ...]] = []
        rejects: list[tuple[Any, ...]] = []
        gaps: list[tuple[Any, ...]] = []
        batches: list[tuple[Any, ...]] = []
        to_list: dict[int, tuple[OfflineCode, str, OfflineRecord, _Job]] = {}
        changed: dict[int, CardShadow] = {}
        fast: dict[tuple[int, int], Any] = {}  # journaled by this group
        stale: set[int] = set()
        visitors: list[tuple[Any, ...]] = []
        visitor_codes: list[tuple[list[int], int]] = []
        own, known = self.own_issuer, self.visitor_issuers
        tac_failures = 0
        tac_ok, tac_ok_fields = self.tacs.tac_ok, self.tacs.tac_ok_fields
        since_yield = 0
        for job in jobs:
            tid, batch_seq = job.terminal_id, job.batch_seq
            codes = job.codes  # in place: a copy of this batch later in the group answers with it
            codes.clear()
            for item in job.items:
                card = item.card
                if own is not None and card // ISSUER_DIV != own:  # a visitor's card: its issuer decides
                    code = _visitor(item, tid, batch_seq, card // ISSUER_DIV in known, visitors, rejects)
                    if code == OfflineCode.FORWARDED:
                        visitor_codes.append((codes, len(codes)))
                    codes.append(int(code))
                    continue
                shadow = shadows.get(card)
                # The common record, straight from the wire: new to its card, TAC right, accepted.
                if shadow is not None and item.counter > shadow.last_counter:
                    bcd = when_bcd(item.when)
                    if bcd is not None and tac_ok_fields(card, item.amount_fen, item.type, tid, item.seq, bcd,
                                                         item.tac):
                        fd = accept_new(shadow, item.counter, item.amount_fen, item.balance_after_fen, item.type)
                        if fd is not None:
                            codes.append(0)
                            records.append((card, item.counter, item.amount_fen, item.balance_after_fen, item.type,
                                            tid, item.seq, item.when, item.tac, item.kind, item.route, 0, batch_seq))
                            fast[(card, item.counter)] = (item, tid)
                            changed[card] = shadow
                            if fd.gap is not None:
                                gaps.append((card, fd.gap[0], fd.gap[1], tid, batch_seq))
                            continue
                try:
                    r: OfflineRecord = record_of(item, tid)
                except ValueError:  # no calendar date: BAD_RECORD
                    codes.append(int(OfflineCode.BAD_RECORD))
                    rejects.append((item.card, item.counter, item.amount_fen, item.balance_after_fen, item.type,
                                    tid, item.seq, item.when, bytes(item.tac), item.kind, item.route,
                                    int(OfflineCode.BAD_RECORD), batch_seq))
                    continue
                before = journaled.get(r.key)
                if before is None and r.key in fast:
                    v = fast[r.key]
                    before = v if isinstance(v, OfflineRecord) else record_of(*v)
                good = shadow is None or (before is not None and before == r) or tac_ok(r)
                d: Decision = decide(shadow, r, before, good)
                code = d.code
                if code == OfflineCode.BALANCE_IMPOSSIBLE and card not in read_now:
                    stale.add(card)
                codes.append(int(code))
                if code == OfflineCode.BAD_TAC:
                    tac_failures += 1
                if d.journaled:
                    assert shadow is not None
                    records.append(store.record_row(r, int(code), batch_seq, item.when))
                    fast[r.key] = r
                    changed[card] = shadow
                    if d.gap is not None:
                        gaps.append((card, d.gap[0], d.gap[1], tid, batch_seq))
                elif code != OfflineCode.DUPLICATE:
                    rejects.append(store.record_row(r, int(code), batch_seq, item.when))
                if d.hotlists and card not in to_list:
                    to_list[card] = (code, d.reason, r, job)
            batches.append((tid, batch_seq, job.mac, codes))
            since_yield += len(job.items)
            if since_yield >= YIELD_RECORDS:
                # Taps share this loop: a 10,000-record group decided in one go held them ~100 ms.
                # Everything this pass changes is its own (shadow copies, local rows).
                since_yield = 0
                await asyncio.sleep(0)
        if not stale:
            g.changed, g.keys, g.to_list, g.tac_failures = changed, fast, to_list, tac_failures
            g.rows = (records, rejects, gaps, batches)
            g.visitors, g.visitor_codes = visitors, visitor_codes
        return stale

    async def _hotlist(self, conn: asyncpg.Connection, card_no: int, code: OfflineCode, reason: str,
                       r: OfflineRecord, job: _Job) -> bool:
        """List the card (unless listed already) with its reason, and say so in the audit log."""
        if await conn.fetchval("SELECT 1 FROM hotlist WHERE card_no = $1", card_no):
            return False
        if self.redis is None:
            raise RuntimeError("offline desk without Redis cannot hotlist")
        # In this group's transaction (a savepoint): the listing commits with the decision. Redis
        # hears of it before the commit; were the commit to fail, the card stays refused at the
        # gateways until a rebuild from Postgres (the safe side), and the batch is resent anyway.
        await hotlist.add(conn, self.redis, self.prefix, card_no, reason)
        await audit.record(
            conn, OPERATOR, ROLE, "card.hotlist.offline", f"card:{card_no}", {"hotlisted": False},
            {"hotlisted": True, "code": code.name, "terminal_id": job.terminal_id, "batch_seq": job.batch_seq,
             "offline_counter": r.offline_counter, "terminal_seq": r.terminal_seq, "amount_fen": r.amount_fen},
            reason, op_key=f"offline:{job.terminal_id}:{job.batch_seq}:{card_no}")
        return True


def _visitor(item: OfflineRecordItem, tid: int, batch_seq: int, known: bool, visitors: list[tuple[Any, ...]],
             rejects: list[tuple[Any, ...]]) -> OfflineCode:
    """Another issuer's card's record: kept for its issuer (no TAC check: this host has none of
    its keys), or refused: an issuer nobody here knows (not kept), a record no card makes."""
    if not known:
        return OfflineCode.UNKNOWN_ISSUER
    if item.type not in PURCHASE_TYPES or when_bcd(item.when) is None:
        rejects.append((item.card, item.counter, item.amount_fen, item.balance_after_fen, item.type, tid, item.seq,
                        item.when, bytes(item.tac), item.kind, item.route, int(OfflineCode.BAD_RECORD), batch_seq))
        return OfflineCode.BAD_RECORD
    visitors.append((item.card, item.counter, item.amount_fen, item.balance_after_fen, item.type, tid, item.seq,
                     item.when, bytes(item.tac), item.kind, item.route, batch_seq))
    return OfflineCode.FORWARDED


def _settle(fut: "asyncio.Future[Any]", value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def issuer_keys(settings: Any) -> IssuerKeys:
    """The issuer's master keys from settings ([card])."""
    c = settings.card
    return IssuerKeys.of_hex(c.issuer_mpk_hex, c.issuer_mlk_hex, c.issuer_mtk_hex)


def issuers_of(settings: Any, fares: Any) -> tuple[int, frozenset[int]]:
    """This host's issuer number (the fare table's home issuer) and the other issuers whose
    cards its validators may sell to offline: the fare tables' interop issuers and, with a
    [region], the registry's card prefixes."""
    known = {int(k) for v in fares.versions for k in getattr(v, "issuers", {})}
    region = getattr(settings, "region", None)
    if region is not None:
        known |= {int(i["card_prefix"]) for i in region.issuers if "card_prefix" in i}
    return int(fares.home_issuer), frozenset(known - {int(fares.home_issuer)})
