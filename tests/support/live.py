"""A live city for attack and overload tests, and a well-behaved terminal tapping beside them.

- ``LiveCity``: ``running_city`` (Postgres, Redis, Ray actors, the TCP gateway) on a **uvloop**
  in a background thread, as ``citycard up`` runs it. Attackers and load run on other threads'
  loops, so a stalled gateway loop shows up as late answers, and the gateway's RSS is this
  process's RSS.
- ``Canary``: a well-behaved terminal on its own thread and loop, tapping at a steady pace
  while the tests attack; checked for answers, latency and durability at the end.

Every loop is bounded in count and in time; all traffic goes to 127.0.0.1.
"""

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil
import uvloop

from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.terminal.client import TerminalClient
from tests.support.city import City, journal_rows, plain_cards, running_city
from tests.support.clock import now_ms
from tests.support.services import ServiceUrls, drop_city_data, new_schema
from tests.support.terminal import HOST

T = TypeVar("T")
FINAL_REFUSALS_OK = {int(Result.OK), int(Result.INSUFFICIENT_FUNDS), int(Result.PASSBACK)}


def rss_bytes(collect: bool = True) -> int:
    if collect:
        gc.collect()
    return psutil.Process().memory_info().rss


def mib(n: float) -> float:
    return round(n / 2**20, 1)


# -- the live platform on its own uvloop --------------------------------------------------
class LiveCity:
    """``running_city`` on a uvloop in a background thread. ``call`` runs a coroutine there."""

    def __init__(self, urls: ServiceUrls, schema: str, **kwargs: Any) -> None:
        self.urls = urls
        self.schema = schema
        self.kwargs = kwargs
        self.loop: asyncio.AbstractEventLoop | None = None
        self.city: City | None = None
        self.loop_errors: list[str] = []  # exceptions the gateway's loop saw in callbacks/tasks
        self.max_lag_s = 0.0  # worst event-loop lag seen by a 20 ms ticker
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="live-gateway", daemon=True)

    def start(self, timeout_s: float = 120.0) -> "LiveCity":
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("platform did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def _main(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            try:
                runner.run(self._serve())
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                self._failure = exc
                self._ready.set()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")
        loop.default_exception_handler(context)

    async def _ticker(self) -> None:
        for _ in range(100_000):  # bounded: ~33 min at 20 ms
            t0 = time.perf_counter()
            await asyncio.sleep(0.02)
            self.max_lag_s = max(self.max_lag_s, time.perf_counter() - t0 - 0.02)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self._on_loop_error)
        self._stop = asyncio.Event()
        async with running_city(self.urls, self.schema, **self.kwargs) as city:
            self.city = city
            ticker = self.loop.create_task(self._ticker())
            self._ready.set()
            await self._stop.wait()
            ticker.cancel()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def reset_lag(self) -> None:
        self.max_lag_s = 0.0

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)

    # -- views of the running gateway (read on its loop) ------------------------------
    def open_connections(self) -> int:
        async def n() -> int:
            return len(self.c.platform.gateway.ctx.connections)  # type: ignore[union-attr]
        return self.call(n(), 10)

    def lane_queues(self) -> list[int]:
        async def q() -> list[int]:
            return [len(lane.queue) for lane in self.c.platform.router.lanes]  # type: ignore[union-attr]
        return self.call(q(), 10)

    async def journal(self, terminal_id: int) -> dict[int, tuple[int, int, int]]:
        """seq -> (card, result, amount) of one terminal's journal rows (on the city loop)."""
        out: dict[int, tuple[int, int, int]] = {}
        for seq, card, result, amount in await journal_rows(self.c, terminal_id):
            assert seq not in out, f"terminal {terminal_id} seq {seq} journaled twice"
            out[seq] = (card, result, amount)
        return out

    @property
    def c(self) -> City:
        assert self.city is not None
        return self.city


@contextlib.contextmanager
def live_city(urls: ServiceUrls, **kwargs: Any) -> Iterator[LiveCity]:
    """A LiveCity in a fresh schema, stopped and its data dropped afterwards (module fixtures)."""
    schema = new_schema()
    city = LiveCity(urls, schema, **kwargs).start()
    try:
        yield city
    finally:
        city.stop()
        drop_city_data(urls, schema)


# -- a well-behaved terminal, tapping throughout -------------------------------------------
@dataclass
class CanaryTap:
    seq: int
    card: int
    sent_s: float
    code: int | None = None
    fare: int = 0
    latency_s: float = 0.0
    error: str = ""


@dataclass
class Canary:
    """Bus taps on one terminal every ``pace_s``, each card once, on its own thread and loop."""

    port: int
    terminal_id: int
    master_key: bytes
    cards: list[int]
    pace_s: float = 0.1
    max_taps: int = 2000
    timeout_s: float = 10.0
    taps: list[CanaryTap] = field(default_factory=list)
    reconnects: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="canary", daemon=True)

    def start(self) -> "Canary":
        self._thread.start()
        return self

    async def _run(self) -> None:
        client = TerminalClient(self.terminal_id, self.master_key)
        await asyncio.wait_for(client.connect(HOST, self.port), self.timeout_s)
        try:
            for i in range(min(self.max_taps, len(self.cards))):
                if self._stop.is_set():
                    break
                t = CanaryTap(i + 1, self.cards[i], time.perf_counter())
                self.taps.append(t)
                try:
                    r = await asyncio.wait_for(
                        client.tap(t.seq, t.card, now_ms(), int(TapKind.BUS), route=7), self.timeout_s)
                    t.code, t.fare = r.code, r.fare_fen
                except Exception as exc:  # noqa: BLE001 - recorded; the test fails on it
                    t.error = repr(exc)
                t.latency_s = time.perf_counter() - t.sent_s
                await asyncio.sleep(max(0.0, self.pace_s - t.latency_s))
        finally:
            await client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)

    @property
    def answered(self) -> list[CanaryTap]:
        return [t for t in self.taps if t.code is not None]

    def summary(self) -> dict[str, Any]:
        lat = sorted(t.latency_s for t in self.answered) or [0.0]
        return {"taps": len(self.taps), "answered": len(self.answered),
                "errors": sum(1 for t in self.taps if t.error),
                "p50_ms": round(lat[len(lat) // 2] * 1000, 1),
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
                "max_ms": round(lat[-1] * 1000, 1)}

    def check(self, live: LiveCity, max_latency_s: float = 3.0) -> dict[str, Any]:
        """Every tap answered, final, in time, and durable exactly as answered."""
        s = self.summary()
        assert s["taps"] >= 5, s
        bad = [t for t in self.taps if t.error or t.code not in FINAL_REFUSALS_OK]
        assert not bad, f"canary taps not served: {bad[:5]} ({s})"
        assert max(t.latency_s for t in self.taps) < max_latency_s, s
        rows = live.call(live.journal(self.terminal_id))
        for t in self.taps:
            assert t.seq in rows, f"canary seq {t.seq} answered but not journaled"
            card, code, amount = rows[t.seq]
            assert (card, code) == (t.card, t.code), (t, rows[t.seq])
            if t.code == Result.OK:
                assert amount == t.fare, (t, rows[t.seq])
        return s


def start_canary(live: LiveCity, max_taps: int, pace_s: float = 0.1) -> Canary:
    """A canary on the live city's first terminal, tapping its plain-fare cards."""
    c = live.c
    return Canary(c.port, c.terminals[0].terminal_id, c.settings.city.master_key, plain_cards(c),
                  pace_s=pace_s, max_taps=max_taps).start()
