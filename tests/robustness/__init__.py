"""Robustness, security and overload tests against a live gateway (issue 6).

Shared harness (kept here: this package may only add ``__init__.py`` and ``test_*.py``):

- ``LiveCity``: a real platform from ``tests.e2e.helpers.running_city`` (Postgres, Redis, Ray
  actors, the TCP gateway) on a **uvloop** in a background thread, as ``citycard up`` runs it.
  Attackers and load run on other threads' loops, so a stalled gateway loop shows up as late
  answers, and the gateway's RSS is this process's RSS.
- ``Canary``: a well-behaved terminal on its own thread and loop, tapping at a steady pace
  while the other tests attack; checked for answers, latency and durability at the end.
- ``RawConn``: a raw TCP connection that sends bytes and reads whole frames with a timeout.
- ``DOCUMENTED_ERRORS``: the error codes of docs/protocol.md section 10, read from the page.

Every loop is bounded in count and in time; all traffic goes to 127.0.0.1.
"""

import asyncio
import contextlib
import gc
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import psutil
import uvloop

from citycard.domain.cards import CardStatus, Category
from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.loadtest.city import CARD_SEED_COLUMNS
from citycard.loadtest.client import TerminalClient
from citycard.protocols import messages as m
from citycard.protocols.codes import ErrorCode
from tests.conftest import ROOT, ServiceUrls, drop_redis_prefix, drop_schema
from tests.e2e.helpers import City, running_city

T = TypeVar("T")
HOST = "127.0.0.1"
COL = {name: i for i, name in enumerate(CARD_SEED_COLUMNS)}
FINAL_REFUSALS_OK = {int(Result.OK), int(Result.INSUFFICIENT_FUNDS), int(Result.PASSBACK)}
RESULTS_FILE = Path(os.environ.get("CITYCARD_ROBUSTNESS_RESULTS",
                                   Path(tempfile.gettempdir()) / "citycard-robustness" / "last_results.json"))


def now_ms() -> int:
    return int(time.time() * 1000)


def rss_bytes(collect: bool = True) -> int:
    if collect:
        gc.collect()
    return psutil.Process().memory_info().rss


def mib(n: float) -> float:
    return round(n / 2**20, 1)


def documented_error_codes() -> dict[int, str]:
    """``code -> name`` from the table of docs/protocol.md section 10."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## 10. Error codes", 1)[1].split("\n## ", 1)[0]
    return {int(c): n for c, n in re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", section, re.M)}


DOCUMENTED_ERRORS = documented_error_codes()
FATAL_NAMES = {"BAD_FRAME", "FRAME_TOO_LARGE", "AUTH_FAILED", "UNKNOWN_TERMINAL", "TERMINAL_DISABLED",
               "AUTH_REPLAY", "UNSUPPORTED_VERSION", "TOO_MANY_ERRORS", "AUTH_TIMEOUT"}


def record_results(section: str, values: dict[str, Any]) -> None:
    """Figures of the last run, for docs/reliability.md: one JSON file, one printed line."""
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS_FILE.read_text())
    except (OSError, ValueError):
        data = {}
    data[section] = {**values, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS_FILE.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"\n[robustness] {section}: {json.dumps(values, sort_keys=True)}")


def plain_cards(city: City) -> list[int]:
    """Active adult cards with no pass or allowance: a bus ride costs the plain card fare."""
    return [c[COL["card_no"]] for c in city.cards
            if c[COL["category"]] == Category.ADULT and c[COL["status"]] == CardStatus.ACTIVE
            and c[COL["monthly_pass_from"]] is None and c[COL["opening_allowance_fen"]] == 0]


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
        conn = await self.c.conn()
        try:
            rows = await conn.fetch("SELECT seq, card_no, result, amount_fen FROM journal"
                                    " WHERE terminal_id = $1", terminal_id)
        finally:
            await conn.close()
        out: dict[int, tuple[int, int, int]] = {}
        for r in rows:
            assert r[0] not in out, f"terminal {terminal_id} seq {r[0]} journaled twice"
            out[r[0]] = (r[1], r[2], r[3])
        return out

    @property
    def c(self) -> City:
        assert self.city is not None
        return self.city


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def drop_city_data(urls: ServiceUrls, schema: str) -> None:
    asyncio.run(drop_schema(urls.db_url, schema))
    asyncio.run(drop_redis_prefix(urls.redis_url, schema))


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


# -- raw connections ------------------------------------------------------------------------
class RawConn:
    """One raw TCP connection: send bytes, read whole frames (decoded with msgpack) or EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.closed = False
        self.frames_sent = 0

    @classmethod
    async def open(cls, port: int, timeout_s: float = 5.0) -> "RawConn":
        r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout_s)
        return cls(r, w)

    async def send(self, data: bytes, frames: int = 1) -> None:
        self.frames_sent += frames
        if self.closed:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.closed = True

    def _take(self) -> dict[str, Any] | None:
        if len(self.buf) < 4:
            return None
        n = int.from_bytes(self.buf[:4], "big")
        if len(self.buf) < 4 + n:
            return None
        body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        assert isinstance(msg, dict) and isinstance(msg.get("t"), str), msg
        return msg

    async def read(self, timeout_s: float = 3.0) -> dict[str, Any] | None:
        """The next frame; None on EOF or when nothing whole arrives in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not await self._fill(left):
                return None

    async def wait_closed(self, timeout_s: float = 3.0) -> bool:
        """Read (and return whether) EOF arrives within ``timeout_s``; frames meanwhile are kept."""
        deadline = time.monotonic() + timeout_s
        while not self.closed and time.monotonic() < deadline:
            if not await self._fill(deadline - time.monotonic()):
                break
        return self.closed

    async def _fill(self, timeout_s: float) -> bool:
        """One read into the buffer (EOF or a reset marks the connection closed); False on timeout."""
        try:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout_s)
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            chunk = b""
        if chunk:
            self.buf += chunk
        else:
            self.closed = True
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - already gone
            pass


def assert_documented_error(msg: dict[str, Any]) -> int:
    """An ``error`` frame carries a code documented in section 10 under its own name."""
    assert msg["t"] == "error", msg
    code = msg["code"]
    assert code in DOCUMENTED_ERRORS, f"undocumented error code {code}: {msg}"
    assert DOCUMENTED_ERRORS[code] == ErrorCode(code).name, (code, DOCUMENTED_ERRORS[code])
    assert isinstance(msg.get("message"), str)
    return int(code)


def frame(obj: Any) -> bytes:
    body = obj if isinstance(obj, bytes) else msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def encode(msg: m.Msg) -> bytes:
    return frame(m.encoder.encode(msg))
