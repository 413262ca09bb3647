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
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ..protocols import messages as m
from ..terminal.client import TerminalClient
from .latency import LatencyRecorder
from .schedule import TerminalPicker, arrival_chunks
from .sender_state import (
    RETRYABLE,
    SEQ_BITS,
    AnsweredColumns,
    SenderSpec,
    SenderState,
    SenderTerminal,
    read_answered,
    tap_key,
)
from .tapmix import TapMaker

__all__ = ["RETRYABLE", "SEQ_BITS", "Sender", "SenderSpec", "SenderState", "read_answered", "sender_main",
           "tap_key"]

ORIGIN_WAIT_S = 180.0
MAX_SLEEP_MS = 20.0  # the loop looks round at least this often (reconnected terminals, the end)
LIST_CARDS_MAX = 2_000_000  # home cards held as a list below this (~16 MB of pointers)


class Sender:
    def __init__(self, spec: SenderSpec, report: Callable[[dict[str, Any]], None]) -> None:
        self.spec = spec
        self.report = report
        self.recorder = LatencyRecorder(interval_ms=spec.interval_ms, timeout_ms=spec.timeout_ms,
                                        max_outstanding=spec.max_outstanding)
        self.state = SenderState()
        home = spec.home_cards
        if not isinstance(home, list) and len(home) <= LIST_CARDS_MAX:
            home = list(home)  # computed once, not per tap
        self.maker = TapMaker(home, spec.visitor_cards, spec.mix,
                              random.Random(spec.seed * 7919 + spec.index))
        self.rng = random.Random(spec.seed * 104_729 + spec.index)
        self.terms = [SenderTerminal(i, p, spec.first_seq.get(p.terminal_id, 1) - 1)
                      for i, p in enumerate(spec.terminals)]
        self._dirty: set[int] = set()  # terminals with queued taps
        self._retries: list[tuple[float, int, int, m.TapItem]] = []  # (due_ms, n, term, item)
        self._retry_n = itertools.count()
        self._attempts: dict[int, int] = {}
        self._answers = AnsweredColumns()
        self._origin_perf = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._replays_in_flight = 0
        self._closing = False  # the run is over: answers and lost connections are ignored
        self._chunks: Iterator[tuple[list[float], list[int]]] = iter(())
        self._times: list[float] = []
        self._which: list[int] = []
        self._pos = 0
        self._wall_origin_ms = 0.0

    def now_ms(self) -> float:
        return (time.perf_counter() - self._origin_perf) * 1000.0

    async def run(self, origin: Any = None) -> dict[str, Any]:
        """``origin``: a shared value the parent sets to the run's start (unix seconds) once
        every sender is connected; None to use ``spec.origin_unix_s``."""
        spec = self.spec
        await self._connect_all()
        origin_unix_s = await self._wait_origin(origin)
        self._origin_perf = time.perf_counter() - (time.time() - origin_unix_s)
        cpu_started_s = time.process_time()
        self._start_arrivals(origin_unix_s * 1000.0)
        hard_stop_ms = spec.duration_ms + spec.timeout_ms + 30_000.0
        next_report_ms = spec.report_every_ms
        if self._times and self._times[0] > self.now_ms():
            await asyncio.sleep((self._times[0] - self.now_ms()) / 1000.0)
        recorder = self.recorder
        while True:
            now = self.now_ms()
            self._admit(now)
            self._due_retries(now)
            self._flush(now)
            if now >= next_report_ms:
                recorder.expire(now)
                self._send_report("tick")
                next_report_ms = now + spec.report_every_ms
            if (not self._times and not self._dirty and not self._retries and recorder.outstanding == 0
                    and not self._replays_in_flight):
                break
            if now >= hard_stop_ms or (not self._times and now >= spec.duration_ms + spec.timeout_ms):
                break
            await asyncio.sleep(max(self._wake_ms(now, next_report_ms) - self.now_ms(), spec.tick_ms) / 1000.0)
        totals = recorder.finish(self.now_ms())
        cpu_s = time.process_time() - cpu_started_s
        await self._close_all()
        answered_file = self._answers.write(Path(spec.out_dir) / f"answered-{spec.index}.bin")
        return self._send_report("done", totals=totals.to_wire(), answered_file=answered_file, cpu_s=cpu_s)

    async def _wait_origin(self, origin: Any) -> float:
        """The run's t = 0 in unix seconds: the parent's, once it sets it, or the spec's."""
        if origin is None:
            return self.spec.origin_unix_s
        self.report({"kind": "ready", "sender": self.spec.index})
        deadline = time.monotonic() + ORIGIN_WAIT_S
        while not origin.value:
            if time.monotonic() > deadline:
                raise TimeoutError("the parent never set the run's origin")
            await asyncio.sleep(0.005)
        return float(origin.value)

    # -- arrivals ----------------------------------------------------------------------------
    def _start_arrivals(self, wall_origin_ms: float) -> None:
        spec = self.spec
        picker = TerminalPicker(len(self.terms), spec.terminal_weights)
        self._chunks = arrival_chunks(spec.profile, random.Random(spec.seed * 31 + spec.index), picker,
                                      max_count=spec.max_count, max_duration_ms=spec.duration_ms)
        self._wall_origin_ms = wall_origin_ms
        self._times, self._which = next(self._chunks, ([], []))
        self._pos = 0  # the next arrival is times[pos] at terminal which[pos]; none once times is empty

    def _admit(self, now: float) -> None:
        """Queue every arrival due by ``now`` at its terminal. The per-tap path: locals only,
        and the chunk's position written back once."""
        times, which, pos = self._times, self._which, self._pos
        if not times or times[pos] > now:
            return
        terms, offered, maker = self.terms, self.state.offered, self.maker
        scheduled, dirty = self.recorder.scheduled, self._dirty
        interval_ms, wall_origin_ms = self.spec.interval_ms, self._wall_origin_ms
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
                times, which = next(self._chunks, ([], []))
                pos = 0
        self._times, self._which, self._pos = times, which, pos

    def _wake_ms(self, now: float, next_report_ms: float) -> float:
        """When something is next due: a terminal's linger ends, the next arrival's would
        (arrivals are taken lazily, by their intended times), a retry, a report."""
        linger = self.spec.linger_ms
        wake_ms = min(next_report_ms, now + MAX_SLEEP_MS)
        if self._dirty:  # terminals waiting for a connection do not count: no busy loop meanwhile
            terms = self.terms
            wake_ms = min(wake_ms, min((t.first_queued_ms for t in map(terms.__getitem__, self._dirty)
                                        if t.client is not None and not t.reconnecting),
                                       default=math.inf) + linger)
        if self._times:
            wake_ms = min(wake_ms, self._times[self._pos] + linger)
        if self._retries:
            wake_ms = min(wake_ms, self._retries[0][0])
        return wake_ms

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

    def _send(self, t: SenderTerminal, items: list[m.TapItem], now: float, replay_of: list[Any] | None = None) -> None:
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

    def _answered(self, t: SenderTerminal, req: int, items: list[m.TapItem], replay_of: list[Any] | None,
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
            self.state.check_replays(results, replay_of)
            return
        now = self.now_ms()
        tid = t.plan.terminal_id
        base = tid << SEQ_BITS
        codes = self.state.codes
        final: list[Any] = []
        keys: list[int] = []
        answered = self._answers
        seqs, fares, answered_codes = answered.seq, answered.fare, answered.code
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
        answered.terminal.extend(array("q", [tid]) * len(keys))
        self.state.charged_fen += charged
        if final and self.spec.replay_share and self.rng.random() < self.spec.replay_share:
            again = [i for i, r in zip(items, results, strict=True) if r.code not in RETRYABLE]
            if t.client is not None and not t.reconnecting:
                self.state.replays_sent += len(again)
                self._send(t, again, now, replay_of=final)

    def _retry_later(self, t: SenderTerminal, item: m.TapItem, now: float) -> None:
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

        async def one(t: SenderTerminal) -> None:
            async with gate:
                t.client = await self._connect(t.plan.terminal_id)

        await asyncio.gather(*[one(t) for t in self.terms])

    async def _connect(self, terminal_id: int) -> TerminalClient:
        client = TerminalClient(terminal_id, self.spec.master_key)
        await client.connect(self.spec.host, self.spec.port)
        return client

    def _lost(self, t: SenderTerminal, items: list[m.TapItem], exc: BaseException) -> None:
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

    async def _reconnect(self, t: SenderTerminal) -> None:
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
        codes, offered = st.take_deltas()
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
