"""``ReaderPool``: the attached PC/SC readers for asyncio code.

    async with ReaderPool(reader_filter=lambda name: "PCD" in name, apdu_timeout_ms=2000) as pool:
        async for event in pool.events():          # ReaderAdded, CardInserted, CardRemoved, ...
            if isinstance(event, CardInserted):
                session = await pool.card(event.reader, timeout_ms=1000)
                raw = await session.transmit(bytes.fromhex("00A4040008A00000063201010500"))

Threads: one monitor thread (``monitor.StatusMonitor``) sees readers and cards come and go;
each reader gets a worker thread (``worker.ReaderWorker``, started on the reader's first
command) that owns its PC/SC context and card handle and runs one command at a time from a
bounded queue. Results come back to the event loop with ``call_soon_threadsafe``.

Timeouts: every command has one (``apdu_timeout_ms`` unless given). pyscard cannot be
interrupted, so on a timeout the reader's worker is abandoned: its thread is left to return
from pyscard on its own (it then releases its handle and context and ends), and the next
command gets a fresh worker with a new context. At most ``MAX_ABANDONED_PER_READER`` abandoned
threads may be alive per reader; beyond that the reader answers ReaderError ("wedged") until
one ends, so a hung reader cannot pile up threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..protocols.apdu import Command, Exchange, Response, parse_response
from . import events as ev
from .errors import (
    ApduTimeout,
    CardRemoved,
    NoCard,
    PcscUnavailable,
    ReaderError,
    ReaderGone,
    ReaderPoolError,
)
from .metrics import ReaderMetrics

if TYPE_CHECKING:
    from .monitor import StatusMonitor
    from .worker import ReaderWorker

PYSCARD_MISSING = ("pyscard is not installed: pip install 'citycard[readers]' (on Debian, first "
                   "apt-get install libpcsclite-dev swig pcscd)")

log = logging.getLogger(__name__)

MAX_READERS = 16  # a validator has one or two (card + SAM); a counter a few
MAX_ABANDONED_PER_READER = 2
CLOSE_JOIN_S = 2.0


@dataclass
class _Reader:
    name: str
    atr: bytes | None = None  # the card in it, as the monitor last saw
    generation: int = 0  # cards seen in it so far; a session belongs to one
    worker: ReaderWorker | None = None
    abandoned: list[ReaderWorker] = field(default_factory=list)


class CardSession:
    """The card that was in ``reader`` when ``ReaderPool.card`` returned. Every command raises
    CardRemoved once that card has left the reader, even if another card is put in."""

    def __init__(self, pool: ReaderPool, reader: str, atr: bytes, generation: int) -> None:
        self._pool, self.reader, self.atr, self.generation = pool, reader, atr, generation

    async def transmit(self, apdu: bytes, timeout_ms: int | None = None) -> bytes:
        """Send one command APDU; the raw response, data and SW1 SW2. 61xx and 6Cxx come back
        as they are (``exchange`` follows them). Raises CardRemoved, ReaderGone, ApduTimeout,
        BadResponse (fewer than 2 bytes back) or ReaderError."""
        if not 4 <= len(apdu) <= 65544:
            raise ReaderError(f"apdu: a command APDU has 4 to 65544 bytes, not {len(apdu)}", self.reader)
        return bytes(await self._pool._run(self.reader, "transmit", self.generation, apdu, timeout_ms))

    async def exchange(self, command: Command, timeout_ms: int | None = None) -> Response:
        """``command`` and its follow-ups (GET RESPONSE on 61xx, resend with Le on 6Cxx) until
        a final response, with the data of every round joined; each round has ``timeout_ms``."""
        exchange = Exchange(command)
        while True:
            raw = await self.transmit(exchange.command.encode(), timeout_ms)
            nxt = exchange.receive(parse_response(raw))
            if isinstance(nxt, Response):
                return nxt


class ReaderPool:
    """The readers ``reader_filter`` accepts (all if None; at most ``max_readers``)."""

    def __init__(self, reader_filter: Callable[[str], bool] | None = None, *, apdu_timeout_ms: int = 2000,
                 queue_depth: int = 8, event_queue_depth: int = 256, max_readers: int = MAX_READERS,
                 metrics: ReaderMetrics | None = None, monitor_wait_ms: int = 1000) -> None:
        for name, value, top in (("apdu_timeout_ms", apdu_timeout_ms, 600_000), ("queue_depth", queue_depth, 1024),
                                 ("event_queue_depth", event_queue_depth, 65536), ("max_readers", max_readers, 64)):
            if not 1 <= value <= top:
                raise ReaderPoolError(f"{name} must be in [1, {top}], got {value}")
        self._filter = reader_filter or (lambda _name: True)
        self.apdu_timeout_ms = apdu_timeout_ms
        self._queue_depth = queue_depth
        self.metrics = metrics or ReaderMetrics(max_readers=max_readers)
        self._events: deque[ev.ReaderEvent] = deque()
        self._event_queue_depth = event_queue_depth
        self._readers: dict[str, _Reader] = {}
        self._max_readers, self._monitor_wait_ms = max_readers, monitor_wait_ms
        self._monitor: StatusMonitor | None = None  # made at start: it needs pyscard
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # set on each monitor report
        self._closed = False
        self.events_dropped = 0

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> ReaderPool:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect to pcscd and start watching; PcscUnavailable if it is not there. The first
        events report each reader present at start and each card in one."""
        try:
            from .monitor import StatusMonitor
        except ImportError:
            raise PcscUnavailable(PYSCARD_MISSING) from None
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._monitor = StatusMonitor(self._from_monitor, self._filter, self._max_readers, self._monitor_wait_ms)
        await asyncio.to_thread(self._monitor.start)

    async def close(self) -> None:
        """Stop watching, stop every worker (waiting up to 2 s each; abandoned ones are not
        waited for). Commands still queued fail with ReaderGone."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            await asyncio.to_thread(self._monitor.stop)
        workers = [r.worker for r in self._readers.values() if r.worker is not None]
        for w in workers:
            w.stop(ReaderGone(f"reader {w.reader!r}: the pool is closed", w.reader))
        for w in workers:
            await asyncio.to_thread(w.join, CLOSE_JOIN_S)
        if self._changed is not None:
            self._changed.set()

    # -- what is there ------------------------------------------------------------------------
    def readers(self) -> list[str]:
        """The watched readers now, in the order they were seen."""
        return list(self._readers)

    def card_atr(self, reader: str) -> bytes | None:
        """The ATR of the card in ``reader`` as last seen, None if empty; ReaderGone if unknown."""
        return self._reader(reader).atr

    async def events(self) -> AsyncIterator[ev.ReaderEvent]:
        """Readers and cards coming and going, oldest first, until the pool closes. One
        consumer. The queue keeps ``event_queue_depth`` events; when full, the oldest is
        dropped (logged, counted in ``citycard_reader_errors_total{kind="events_dropped"}``)."""
        assert self._changed is not None, "start the pool first"
        while True:
            while self._events:
                yield self._events.popleft()
            if self._closed:
                return
            self._changed.clear()
            await self._changed.wait()

    async def card(self, reader: str, timeout_ms: int | None = None) -> CardSession:
        """A session on the card in ``reader``, waiting up to ``timeout_ms`` for the reader to
        appear and a card to be put in. Raises ReaderGone (no such reader by then), NoCard (no
        card by then), CardRemoved (pulled while connecting) or ReaderError."""
        assert self._loop is not None and self._changed is not None, "start the pool first"
        timeout_s = (timeout_ms if timeout_ms is not None else self.apdu_timeout_ms) / 1000
        deadline = self._loop.time() + timeout_s
        while True:
            state = self._readers.get(reader)
            if state is not None and state.atr is not None:
                break
            left = deadline - self._loop.time()
            if left <= 0 or self._closed:
                if state is None:
                    raise ReaderGone(f"no reader {reader!r} (watching: {', '.join(self._readers) or 'none'})", reader)
                raise NoCard(f"no card in reader {reader!r} within {timeout_s * 1000:g} ms", reader)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass
        generation = state.generation
        left_ms = max(1, int((deadline - self._loop.time()) * 1000))
        atr = await self._run(reader, "connect", generation, b"", max(left_ms, self.apdu_timeout_ms))
        return CardSession(self, reader, bytes(atr), generation)

    # -- commands to workers ------------------------------------------------------------------
    def _reader(self, name: str) -> _Reader:
        state = self._readers.get(name)
        if state is None:
            raise ReaderGone(f"no reader {name!r}", name)
        return state

    def _worker(self, state: _Reader) -> ReaderWorker:
        if state.worker is None:
            state.abandoned = [w for w in state.abandoned if w.alive]
            if len(state.abandoned) >= MAX_ABANDONED_PER_READER:
                raise ReaderError(f"reader {state.name!r} is wedged: {len(state.abandoned)} commands never "
                                  "returned from PC/SC; pull the card or replug the reader", state.name)
            from .worker import ReaderWorker  # pyscard is there: start() checked

            state.worker = ReaderWorker(state.name, self._queue_depth, self.metrics, self._worker_exited)
        return state.worker

    async def _run(self, reader: str, kind: str, generation: int, apdu: bytes, timeout_ms: int | None) -> Any:
        if self._closed:
            raise ReaderGone(f"reader {reader!r}: the pool is closed", reader)
        state = self._reader(reader)
        if state.generation != generation or state.atr is None:
            self.metrics.error(reader, "card_removed")
            raise CardRemoved(f"the card left reader {reader!r}", reader)
        assert self._loop is not None
        timeout_ms = timeout_ms if timeout_ms is not None else self.apdu_timeout_ms
        if not 1 <= timeout_ms <= 600_000:
            raise ReaderPoolError(f"timeout_ms must be in [1, 600000], got {timeout_ms}", reader)
        worker = self._worker(state)
        from .worker import Job  # here, not at the top: the module needs pyscard

        fut: asyncio.Future[Any] = self._loop.create_future()
        worker.submit(Job(kind, generation, fut, self._loop, apdu))
        try:
            return await asyncio.wait_for(fut, timeout_ms / 1000)
        except TimeoutError:
            self.metrics.error(reader, "timeout")
            why = ApduTimeout(f"reader {reader!r}: no answer to {kind} within {timeout_ms} ms", reader)
            if state.worker is worker:  # replace it; the next command gets a fresh one
                worker.abandon(why)
                state.abandoned.append(worker)
                state.worker = None
            raise why from None
        except CardRemoved:
            if self._readers.get(reader) is state and state.generation == generation:
                state.generation += 1  # the monitor may be late; this session is over anyway
            raise

    def _worker_exited(self, worker: ReaderWorker) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._forget_worker, worker)

    def _forget_worker(self, worker: ReaderWorker) -> None:
        state = self._readers.get(worker.reader)
        if state is not None:
            if state.worker is worker:
                state.worker = None
            state.abandoned = [w for w in state.abandoned if w is not worker]

    # -- from the monitor thread --------------------------------------------------------------
    def _from_monitor(self, events: list[ev.ReaderEvent]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._apply, events)
        except RuntimeError:
            pass  # the loop closed meanwhile

    def _apply(self, events: list[ev.ReaderEvent]) -> None:
        for event in events:
            if isinstance(event, ev.ReaderAdded):
                self._readers.setdefault(event.reader, _Reader(event.reader))
            elif isinstance(event, ev.ReaderRemoved):
                state = self._readers.pop(event.reader, None)
                if state is not None and state.worker is not None:
                    state.worker.stop(ReaderGone(f"reader {event.reader!r} was unplugged", event.reader))
            elif isinstance(event, ev.CardInserted):
                state = self._readers.setdefault(event.reader, _Reader(event.reader))
                state.atr, state.generation = event.atr, state.generation + 1
                self.metrics.card_seen(event.reader)
            elif isinstance(event, ev.CardRemoved):
                state = self._readers.get(event.reader)
                if state is not None:
                    state.atr, state.generation = None, state.generation + 1
            self._push(event)
        self.metrics.readers_present.set(len(self._readers))
        if self._changed is not None:
            self._changed.set()

    def _push(self, event: ev.ReaderEvent) -> None:
        if len(self._events) >= self._event_queue_depth:
            dropped = self._events.popleft()
            self.events_dropped += 1
            self.metrics.error(dropped.reader, "events_dropped")
            log.warning("reader event queue full (%d): dropped the oldest, %s on %r",
                        self._event_queue_depth, ev.event_kind(dropped), dropped.reader)
        self._events.append(event)
