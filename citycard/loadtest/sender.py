"""One sender process of the load lab: open-loop arrivals for its share of the virtual
terminals, sent over their authenticated connections, every tap accounted from its intended
send time (a stalled server shows as latency, never as fewer samples).

Each virtual terminal is one real connection (the protocol authenticates a terminal per
connection); one process multiplexes many of them on one uvloop. A terminal lingers up to
``linger_ms`` to put taps due together into one ``taps`` batch, as a busy validator would.
``BUSY``/``RETRY`` answers and taps lost with a connection are sent again with the same seq.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import os
import random
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..domain.results import Result
from ..protocols import messages as m
from ..terminal.client import TerminalClient
from .city import TerminalPlan
from .latency import LatencyRecorder
from .schedule import RateProfile, TerminalPicker, arrival_chunks
from .tapmix import TapMaker, TapMix

RETRYABLE = frozenset((int(Result.BUSY), int(Result.RETRY)))
N_CODES = 256
ORIGIN_WAIT_S = 180.0
MAX_SLEEP_MS = 20.0  # the loop looks round at least this often (reconnected terminals, the end)
LIST_CARDS_MAX = 2_000_000  # home cards held as a list below this (~16 MB of pointers)
SEQ_BITS = 32


def tap_key(terminal_id: int, seq: int) -> int:
    """One int per (terminal, seq): cheaper to hash than a tuple, on the per-tap path."""
    return (terminal_id << SEQ_BITS) | seq


@dataclass(frozen=True)
class SenderSpec:
    index: int
    host: str
    port: int
    master_key: bytes
    terminals: list[TerminalPlan]  # this sender's terminals
    first_seq: dict[int, int]  # terminal id -> first seq to use (after what the record holds)
    terminal_weights: list[float]  # relative tap rate of each terminal
    home_cards: Sequence[int]
    visitor_cards: Sequence[int]
    mix: TapMix
    profile: RateProfile  # this sender's share of the rate
    max_count: int
    duration_ms: float
    seed: int
    origin_unix_s: float  # the run's t = 0 on the wall clock, shared by every sender
    out_dir: str  # answered keys are written here for the audit
    linger_ms: float = 2.0
    max_batch: int = 200
    timeout_ms: float = 10_000.0
    retry_after_ms: float = 1000.0
    max_attempts: int = 5
    replay_share: float = 0.0  # share of answered batches sent again on purpose (idempotency)
    max_outstanding: int = 500_000
    connect_concurrency: int = 32
    report_every_ms: float = 1000.0
    interval_ms: float = 1000.0


@dataclass
class _Terminal:
    index: int
    plan: TerminalPlan
    seq: int
    client: TerminalClient | None = None
    queue: list[m.TapItem] = field(default_factory=list)
    first_queued_ms: float = math.inf
    inflight: dict[int, list[m.TapItem]] = field(default_factory=dict)
    resend: list[m.TapItem] = field(default_factory=list)
    reconnecting: bool = False
    dead: bool = False


@dataclass
class SenderState:
    """Counters shipped to the parent: deltas in ``tick`` reports, all of it at the end."""

    offered: dict[int, int] = field(default_factory=dict)  # interval index -> taps scheduled
    codes: list[int] = field(default_factory=lambda: [0] * N_CODES)  # final answers by code
    retryable: int = 0  # BUSY / RETRY answers (sent again)
    charged_fen: int = 0
    replays_sent: int = 0
    replays_matched: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    replay_mismatches: list[str] = field(default_factory=list)


class Sender:
    def __init__(self, spec: SenderSpec, report: Callable[[dict[str, Any]], None]) -> None:
        self.spec = spec
        self.report = report
        self.recorder = LatencyRecorder(interval_ms=spec.interval_ms, timeout_ms=spec.timeout_ms,
                                        max_outstanding=spec.max_outstanding)
        self.state = SenderState()
        self._sent_codes = [0] * N_CODES
        self._sent_offered: dict[int, int] = {}
        home = spec.home_cards
        if not isinstance(home, list) and len(home) <= LIST_CARDS_MAX:
            home = list(home)  # computed once, not per tap
        self.maker = TapMaker(home, spec.visitor_cards, spec.mix,
                              random.Random(spec.seed * 7919 + spec.index))
        self.rng = random.Random(spec.seed * 104_729 + spec.index)
        self.terms = [_Terminal(i, p, spec.first_seq.get(p.terminal_id, 1) - 1)
                      for i, p in enumerate(spec.terminals)]
        self._dirty: set[int] = set()  # terminals with queued taps
        self._retries: list[tuple[float, int, int, m.TapItem]] = []  # (due_ms, n, term, item)
        self._retry_n = itertools.count()
        self._attempts: dict[int, int] = {}
        self._answered_term = array("q")
        self._answered_seq = array("q")
        self._answered_code = array("b")
        self._answered_fare = array("q")
        self._origin_perf = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._replays_in_flight = 0
        self._closing = False  # the run is over: answers and lost connections are ignored

    def now_ms(self) -> float:
        return (time.perf_counter() - self._origin_perf) * 1000.0

    async def run(self, origin: Any = None) -> dict[str, Any]:
        """``origin``: a shared value the parent sets to the run's start (unix seconds) once
        every sender is connected; None to use ``spec.origin_unix_s``."""
        spec = self.spec
        await self._connect_all()
        origin_unix_s = spec.origin_unix_s
        if origin is not None:
            self.report({"kind": "ready", "sender": spec.index})
            deadline = time.monotonic() + ORIGIN_WAIT_S
            while not origin.value:
                if time.monotonic() > deadline:
                    raise TimeoutError("the parent never set the run's origin")
                await asyncio.sleep(0.005)
            origin_unix_s = origin.value
        self._origin_perf = time.perf_counter() - (time.time() - origin_unix_s)
        cpu_started_s = time.process_time()
        picker = TerminalPicker(len(self.terms), spec.terminal_weights)
        chunks = arrival_chunks(spec.profile, random.Random(spec.seed * 31 + spec.index), picker,
                                max_count=spec.max_count, max_duration_ms=spec.duration_ms)
        wall_origin_ms = origin_unix_s * 1000.0
        hard_stop_ms = spec.duration_ms + spec.timeout_ms + 30_000.0
        next_report_ms = spec.report_every_ms
        times, which = next(chunks, ([], []))
        pos = 0  # the next arrival is times[pos] at terminal which[pos]; none once times is empty
        if times and times[0] > self.now_ms():
            await asyncio.sleep((times[0] - self.now_ms()) / 1000.0)
        recorder, terms, offered, maker = self.recorder, self.terms, self.state.offered, self.maker
        scheduled, dirty = recorder.scheduled, self._dirty
        interval_ms = spec.interval_ms
        while True:
            now = self.now_ms()
            while times:
                at_ms = times[pos]
                if at_ms > now:
                    break
                i = which[pos]
                t = terms[i]
                t.seq = seq = t.seq + 1
                index = int(at_ms // interval_ms)
                offered[index] = offered.get(index, 0) + 1
                if scheduled((t.plan.terminal_id << SEQ_BITS) | seq, at_ms):
                    if not t.queue:
                        t.first_queued_ms = at_ms  # the terminal lingers from when the tap was due
                        dirty.add(i)
                    t.queue.append(maker.make(t.plan, seq, int(wall_origin_ms + at_ms)))
                pos += 1
                if pos == len(times):
                    times, which = next(chunks, ([], []))
                    pos = 0
            self._due_retries(now)
            self._flush(now)
            if now >= next_report_ms:
                recorder.expire(now)
                self._send_report("tick")
                next_report_ms = now + spec.report_every_ms
            if (not times and not dirty and not self._retries and recorder.outstanding == 0
                    and not self._replays_in_flight):
                break
            if now >= hard_stop_ms or (not times and now >= spec.duration_ms + spec.timeout_ms):
                break
            # Sleep until something is due: a terminal's linger ends, the next arrival's would
            # (arrivals are taken lazily, by their intended times), a retry, a report.
            linger = spec.linger_ms
            wake_ms = min(next_report_ms, now + MAX_SLEEP_MS)
            if dirty:  # terminals waiting for a connection do not count: no busy loop meanwhile
                wake_ms = min(wake_ms, min((t.first_queued_ms for t in map(terms.__getitem__, dirty)
                                            if t.client is not None and not t.reconnecting),
                                           default=math.inf) + linger)
            if times:
                wake_ms = min(wake_ms, times[pos] + linger)
            if self._retries:
                wake_ms = min(wake_ms, self._retries[0][0])
            await asyncio.sleep(max(wake_ms - self.now_ms(), 0.0) / 1000.0)
        totals = recorder.finish(self.now_ms())
        cpu_s = time.process_time() - cpu_started_s
        await self._close_all()
        answered_file = self._write_answered()
        final = self._send_report("done", totals=totals.to_wire(), answered_file=answered_file, cpu_s=cpu_s)
        return final

    # -- sending ---------------------------------------------------------------------------
    def _flush(self, now: float) -> None:
        linger, max_batch = self.spec.linger_ms, self.spec.max_batch
        done = []
        for i in self._dirty:
            t = self.terms[i]
            if t.client is None or t.reconnecting:
                continue
            if now - t.first_queued_ms < linger and len(t.queue) < max_batch:
                continue
            queue = t.queue
            while queue:
                items, queue = queue[:max_batch], queue[max_batch:]
                self._send(t, items, now)
            t.queue = queue
            done.append(i)
        for i in done:
            self._dirty.discard(i)

    def _send(self, t: _Terminal, items: list[m.TapItem], now: float, replay_of: list[Any] | None = None) -> None:
        assert t.client is not None
        try:
            req, fut = t.client.send_taps(items)
        except Exception as exc:  # noqa: BLE001 - the socket broke under us: resend later
            self._lost(t, items, exc)
            return
        if replay_of is None:
            t.inflight[req] = items
            base = t.plan.terminal_id << SEQ_BITS
            self.recorder.sent_many([base | item.seq for item in items], now)
        else:
            self._replays_in_flight += 1
        fut.add_done_callback(partial(self._answered, t, req, items, replay_of))

    def _answered(self, t: _Terminal, req: int, items: list[m.TapItem], replay_of: list[Any] | None,
                  fut: asyncio.Future[m.Results]) -> None:
        if replay_of is None:
            t.inflight.pop(req, None)
        else:
            self._replays_in_flight -= 1
        exc = fut.exception()  # retrieved even when closing, so asyncio does not log it
        if self._closing:
            return
        if exc is not None:
            if replay_of is None:
                self._lost(t, items, exc)
            return
        results = fut.result().results
        if replay_of is not None:
            self._check_replays(items, results, replay_of)
            return
        now = self.now_ms()
        tid = t.plan.terminal_id
        base = tid << SEQ_BITS
        codes = self.state.codes
        final: list[Any] = []
        keys: list[int] = []
        seqs, fares, answered_codes = self._answered_seq, self._answered_fare, self._answered_code
        charged = 0
        for item, r in zip(items, results, strict=True):
            code = r.code
            if code in RETRYABLE:
                self.state.retryable += 1
                self._retry_later(t, item, now)
                continue
            keys.append(base | r.seq)
            codes[code] += 1
            seqs.append(r.seq)
            answered_codes.append(code)
            if code == 0:
                fares.append(r.fare_fen)
                if not r.replay:
                    charged += r.fare_fen
            else:
                fares.append(0)
            final.append(r)
        self.recorder.answered_many(keys, now)
        self._answered_term.extend(array("q", [tid]) * len(keys))
        self.state.charged_fen += charged
        if final and self.spec.replay_share and self.rng.random() < self.spec.replay_share:
            again = [i for i, r in zip(items, results, strict=True) if r.code not in RETRYABLE]
            if t.client is not None and not t.reconnecting:
                self.state.replays_sent += len(again)
                self._send(t, again, now, replay_of=final)

    def _check_replays(self, items: list[m.TapItem], results: list[m.ResultItem],
                       first: list[Any]) -> None:
        by_seq = {r.seq: (r.code, r.fare_fen) for r in first}
        for r in results:
            if r.code in RETRYABLE:
                self.state.replays_sent -= 1  # not processed (overload): no replay to check
            elif r.replay and by_seq.get(r.seq) == (r.code, r.fare_fen):
                self.state.replays_matched += 1
            elif len(self.state.replay_mismatches) < 20:
                self.state.replay_mismatches.append(
                    f"seq {r.seq}: first {by_seq.get(r.seq)}, again code {r.code} fare {r.fare_fen} "
                    f"replay {r.replay}")

    def _retry_later(self, t: _Terminal, item: m.TapItem, now: float) -> None:
        key = tap_key(t.plan.terminal_id, item.seq)
        attempt = self._attempts.get(key, 1) + 1
        if attempt > self.spec.max_attempts:
            return  # left in flight: it ends as a timeout
        self._attempts[key] = attempt
        due = now + self.spec.retry_after_ms * (2 ** (attempt - 2))
        heapq.heappush(self._retries, (due, next(self._retry_n), t.index, item))

    def _due_retries(self, now: float) -> None:
        heap = self._retries
        while heap and heap[0][0] <= now:
            _, _, i, item = heapq.heappop(heap)
            t = self.terms[i]
            if not t.queue:
                t.first_queued_ms = now
                self._dirty.add(i)
            t.queue.append(item)

    # -- connections -----------------------------------------------------------------------
    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(self.spec.connect_concurrency)

        async def one(t: _Terminal) -> None:
            async with gate:
                t.client = await self._connect(t.plan.terminal_id)

        await asyncio.gather(*[one(t) for t in self.terms])

    async def _connect(self, terminal_id: int) -> TerminalClient:
        client = TerminalClient(terminal_id, self.spec.master_key)
        await client.connect(self.spec.host, self.spec.port)
        return client

    def _lost(self, t: _Terminal, items: list[m.TapItem], exc: BaseException) -> None:
        """A connection broke: its unanswered taps go again, same seqs, on a new connection."""
        if self._closing:
            return
        t.resend.extend(items)
        if t.reconnecting or t.dead:
            return
        t.reconnecting = True
        if len(self.state.errors) < 50:
            self.state.errors.append(f"terminal {t.plan.terminal_id}: {exc!r}")
        task = asyncio.get_running_loop().create_task(self._reconnect(t))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconnect(self, t: _Terminal) -> None:
        old, t.client = t.client, None
        if old is not None:
            await old.close()
        for attempt in range(self.spec.max_attempts):
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
            try:
                t.client = await self._connect(t.plan.terminal_id)
            except Exception as exc:  # noqa: BLE001 - try again, bounded
                if len(self.state.errors) < 50:
                    self.state.errors.append(f"reconnect {t.plan.terminal_id}: {exc!r}")
                continue
            self.state.reconnects += 1
            # Unanswered first, in seq order, then what queued up meanwhile.
            pending = t.resend + [i for items in t.inflight.values() for i in items] + t.queue
            t.inflight.clear()
            t.resend = []
            t.queue = sorted({i.seq: i for i in pending}.values(), key=lambda i: i.seq)
            t.reconnecting = False
            if t.queue:
                t.first_queued_ms = -math.inf
                self._dirty.add(t.index)
            return
        t.dead = True  # its taps stay in flight and end as timeouts
        t.reconnecting = False

    async def _close_all(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*[t.client.close() for t in self.terms if t.client is not None],
                             return_exceptions=True)

    # -- reporting -------------------------------------------------------------------------
    def _send_report(self, kind: str, **extra: Any) -> dict[str, Any]:
        st = self.state
        codes = {c: n - self._sent_codes[c] for c, n in enumerate(st.codes) if n != self._sent_codes[c]}
        self._sent_codes = list(st.codes)
        offered = {i: n - self._sent_offered.get(i, 0) for i, n in st.offered.items()
                   if n != self._sent_offered.get(i, 0)}
        self._sent_offered = dict(st.offered)
        msg: dict[str, Any] = {
            "kind": kind, "sender": self.spec.index,
            "intervals": [s.to_wire() for s in self.recorder.take_intervals()],
            "offered": offered, "codes": codes, "outstanding": self.recorder.outstanding,
            "retryable": st.retryable, "reconnects": st.reconnects,
        }
        if kind == "done":
            msg |= {"charged_fen": st.charged_fen, "replays_sent": st.replays_sent,
                    "replays_matched": st.replays_matched, "errors": list(st.errors),
                    "replay_mismatches": list(st.replay_mismatches),
                    "intervals_dropped": self.recorder.intervals_dropped,
                    "last_seq": {t.plan.terminal_id: t.seq for t in self.terms}}
        msg |= extra
        self.report(msg)
        return msg

    def _write_answered(self) -> str:
        path = Path(self.spec.out_dir) / f"answered-{self.spec.index}.bin"
        with path.open("wb") as f:
            n = array("q", [len(self._answered_term)])
            n.tofile(f)
            self._answered_term.tofile(f)
            self._answered_seq.tofile(f)
            self._answered_fare.tofile(f)
            self._answered_code.tofile(f)
        return str(path)


def read_answered(path: str) -> tuple[array[int], array[int], array[int], array[int]]:
    """(terminal ids, seqs, fares, codes) of the first final answers a sender received."""
    with open(path, "rb") as f:
        n_arr = array("q")
        n_arr.fromfile(f, 1)
        n = n_arr[0]
        cols = []
        for typecode in ("q", "q", "q", "b"):
            col = array(typecode)
            col.fromfile(f, n)
            cols.append(col)
    return cols[0], cols[1], cols[2], cols[3]


def sender_main(spec: SenderSpec, queue: Any, origin: Any = None) -> None:
    """Entry point of a sender process: reports go to ``queue`` (a multiprocessing queue)."""
    import uvloop

    os.makedirs(spec.out_dir, exist_ok=True)

    def report(msg: dict[str, Any]) -> None:
        queue.put(msg)

    try:
        uvloop.run(Sender(spec, report).run(origin))
    except BaseException as exc:  # noqa: BLE001 - the parent must hear of it, whatever it was
        queue.put({"kind": "failed", "sender": spec.index, "error": repr(exc)})
