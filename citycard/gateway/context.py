"""What every terminal connection of one gateway process shares: the router, sessions,
metrics, limits, the per-terminal token buckets and the open connections."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..domain.hotlist import Delta
from ..domain.results import Result
from ..domain.taps import TapKind
from ..protocols.codes import ErrorCode
from .metrics import Metrics
from .router import Router
from .sessions import SessionReporter

if TYPE_CHECKING:
    from .server import TerminalProtocol

log = logging.getLogger(__name__)

_RESULT_NAMES = {int(r): r.name for r in Result}
_KIND_NAMES = {int(k): k.name for k in TapKind}  # metric labels by name, like results


def _now_ms() -> int:
    return int(time.time() * 1000)


class GatewayContext:
    """What every connection shares."""

    def __init__(
        self,
        router: Router,
        sessions: Sequence[Any],
        reporter: SessionReporter,
        metrics: Metrics,
        *,
        max_frame_bytes: int,
        max_batch_taps: int,
        auth_timeout_ms: int,
        heartbeat_ms: int,
        fare_version: Any,
        hotlist_version: Any,
        hotlist_delta: Callable[[int], Awaitable[Delta]] | None = None,
        fare_table_text: Callable[[], str] | None = None,
        idle_heartbeats: int = 3,
        terminal_max_taps_per_s: float = 0.0,
        terminal_burst_taps: int = 0,
        wall_ms: Callable[[], int] = _now_ms,
        nonce: Callable[[int], bytes] = os.urandom,
        offline: Any = None,
    ) -> None:
        self.router = router
        self.sessions = sessions
        self.reporter = reporter
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.max_batch_taps = max_batch_taps
        self.auth_timeout_s = auth_timeout_ms / 1000.0
        self.heartbeat_ms = heartbeat_ms
        self.fare_version = fare_version  # callable -> the version in force now
        self.hotlist_version = hotlist_version  # callable -> int
        self.hotlist_delta = hotlist_delta  # from version -> Delta (None: answer versions only)
        self.fare_table_text = fare_table_text  # the table in force as TOML (None: not served)
        self.idle_timeout_s = idle_heartbeats * heartbeat_ms / 1000.0  # protocol 11; 0: never
        self.terminal_rate = terminal_max_taps_per_s  # 0: no per-terminal limit
        self.terminal_burst = terminal_burst_taps
        self.buckets: dict[int, list[float]] = {}  # terminal_id -> [tokens, last refill]
        self.wall_ms = wall_ms  # Unix time for the wire; injected so a simulation can fake it
        self.nonce = nonce
        self.offline = offline  # gateway.offline.OfflineDesk: offline uploads (None: not served here)
        self._tap_counters: dict[tuple[int, int], Any] = {}  # (kind, result) -> its labelled child
        self.tasks: set[asyncio.Task[Any]] = set()
        self.connections: set[TerminalProtocol] = set()  # open connections
        # held while the router is pressed, in the order they stopped (first held, first resumed)
        self.paused: dict[TerminalProtocol, None] = {}
        router.on_pressure = self._on_pressure

    def _on_pressure(self, pressed: bool) -> None:
        if pressed:
            return  # each connection holds its next taps itself (TerminalProtocol._events)
        waiting, self.paused = list(self.paused), {}
        for k, c in enumerate(waiting):
            if self.router.pressed:  # pressed again by those before: the rest keep their turn, first
                self.paused = {**dict.fromkeys(waiting[k:]), **self.paused}
                break
            try:
                c.resume()
            except Exception:  # noqa: BLE001 - one connection's failure must not leave the rest paused
                log.exception("terminal %s: resume after backpressure failed", c.conn.terminal_id)
        self.metrics.paused_connections.set(len(self.paused))

    def pause(self, c: TerminalProtocol) -> None:
        self.paused[c] = None
        self.metrics.paused_connections.set(len(self.paused))

    def unpause(self, c: TerminalProtocol) -> None:
        """``c`` closed, or drains before closing: it is no longer waiting for its turn."""
        if c in self.paused:
            del self.paused[c]
            self.metrics.paused_connections.set(len(self.paused))

    def tap_counter(self, key: tuple[int, int]) -> Any:
        """The taps counter's child for (kind, result): looked up once, not per answer."""
        child = self._tap_counters.get(key)
        if child is None:
            kind, code = key
            child = self.metrics.taps.labels(_KIND_NAMES.get(kind, str(kind)), _RESULT_NAMES.get(code, str(code)))
            self._tap_counters[key] = child
        return child

    def admit(self, terminal_id: int, n: int, now: float) -> int:
        """How many of ``n`` taps this terminal may submit at loop time ``now`` (token bucket);
        the rest get BUSY."""
        if self.terminal_rate <= 0:
            return n
        b = self.buckets.get(terminal_id)
        if b is None:
            b = self.buckets[terminal_id] = [float(self.terminal_burst), now]
        b[0] = min(float(self.terminal_burst), b[0] + (now - b[1]) * self.terminal_rate)
        b[1] = now
        k = min(n, int(b[0]))
        b[0] -= k
        return k

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def disconnect_terminal(self, terminal_id: int, code: ErrorCode, message: str) -> int:
        """Send ``code`` to every open connection of this terminal and close it; returns how
        many. Connections still authenticating count too: their check may have read the
        terminal before it was disabled."""
        closed = 0
        for c in list(self.connections):
            if c.conn.terminal_id != terminal_id or c.conn.closed or c.transport is None:
                continue
            c.refuse(code, message)
            closed += 1
        if closed:
            self.metrics.protocol_errors.labels(code.name).inc(closed)
        return closed
