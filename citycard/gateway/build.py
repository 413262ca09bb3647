"""The one way to build a gateway's parts (Router, SessionReporter, GatewayContext): the
platform (cli/runtime.py) and the simulation (tests/sim/gateway.py) both call build_gateway,
so the simulation runs the gateway exactly as wired in production."""

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..actors.shard_client import ShardClient
from ..config.settings import Gateway as GatewaySettings
from ..domain.hotlist import Delta
from .context import GatewayContext
from .metrics import Metrics
from .router import Router
from .seqbook import SeqBook
from .sessions import SessionReporter


@dataclass(frozen=True)
class GatewayLimits:
    """The bounds of one gateway (settings' gateway section; the simulation picks its own)."""

    shard_batch_max_taps: int
    shard_inflight_calls: int
    shard_queue_max_taps: int
    linger_ms: float
    max_frame_bytes: int
    max_batch_taps: int
    auth_timeout_ms: int
    heartbeat_ms: int
    terminal_max_taps_per_s: float = 0.0
    terminal_burst_taps: int = 0
    seq_memory_per_terminal: int = 1024  # 0: no cross-shard seq memory (each shard dedupes its own)
    seq_memory_total: int = 500_000
    shard_pipeline_min_taps: int = 1  # 1: every call may overlap (the simulation's default)
    shard_queue_pause_taps: int = 0  # 0: terminals are always read (the simulation picks its own)

    @classmethod
    def from_settings(cls, g: GatewaySettings) -> "GatewayLimits":
        return cls(g.shard_batch_max_taps, g.shard_inflight_calls, g.shard_queue_max_taps, g.linger_ms,
                   g.max_frame_bytes, g.max_batch_taps, g.auth_timeout_ms, g.heartbeat_ms,
                   g.terminal_max_taps_per_s, g.terminal_burst_taps, g.seq_memory_per_terminal,
                   g.seq_memory_total, g.shard_pipeline_min_taps, g.queue_pause_taps)


@dataclass(frozen=True)
class GatewayParts:
    router: Router
    reporter: SessionReporter
    ctx: GatewayContext


def _wall_ms() -> int:
    return int(time.time() * 1000)


def build_gateway(
    client: ShardClient,
    sessions: Sequence[Any],
    hotlist: Callable[[], set[int]],
    metrics: Metrics,
    limits: GatewayLimits,
    *,
    fare_version: Callable[[], int],
    hotlist_version: Callable[[], int],
    hotlist_delta: Callable[[int], Awaitable[Delta]] | None = None,
    fare_table_text: Callable[[], str] | None = None,
    wall_ms: Callable[[], int] = _wall_ms,
    nonce: Callable[[int], bytes] = os.urandom,
    offline: Any = None,
) -> GatewayParts:
    """Router, session reporter and connection context; the caller starts the reporter (and
    stops the three: reporter, router, gateway) as part of its own lifecycle."""
    router = Router(client, hotlist, metrics, batch_max_taps=limits.shard_batch_max_taps,
                    inflight_calls=limits.shard_inflight_calls, queue_max_taps=limits.shard_queue_max_taps,
                    linger_ms=limits.linger_ms, pipeline_min_taps=limits.shard_pipeline_min_taps,
                    pause_queue_taps=limits.shard_queue_pause_taps)
    if limits.seq_memory_per_terminal:
        router.seqs = SeqBook(limits.seq_memory_per_terminal,
                              max(limits.seq_memory_total, limits.seq_memory_per_terminal), router.home)
    reporter = SessionReporter(sessions)
    ctx = GatewayContext(
        router, sessions, reporter, metrics,
        max_frame_bytes=limits.max_frame_bytes, max_batch_taps=limits.max_batch_taps,
        auth_timeout_ms=limits.auth_timeout_ms, heartbeat_ms=limits.heartbeat_ms,
        fare_version=fare_version, hotlist_version=hotlist_version, hotlist_delta=hotlist_delta,
        fare_table_text=fare_table_text,
        terminal_max_taps_per_s=limits.terminal_max_taps_per_s, terminal_burst_taps=limits.terminal_burst_taps,
        wall_ms=wall_ms, nonce=nonce, offline=offline,
    )
    return GatewayParts(router, reporter, ctx)
