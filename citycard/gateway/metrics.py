"""Prometheus metrics of the running platform, in one registry served at /metrics."""

import asyncio
import bisect
import platform
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import __version__

# No `_created` series beside every counter and histogram: they double the series a scrape
# carries and answer no operator's question (docs/operations.md lists what is exposed).
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class BatchHistogram(Collector):
    """A histogram that takes ``n`` equal observations in one call: the taps of one request
    are answered together, so they share one latency. Plain ints, one bisect per request
    (``Histogram.observe`` per tap took ~1.3 us of gateway CPU per tap). Exposed exactly as
    a ``Histogram`` of the same name (``_bucket``, ``_count``, ``_sum``)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [*buckets, float("inf")]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float, n: int = 1) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += n  # le: value <= bound
        self._sum += value * n

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = list(self._counts), self._sum  # the event loop may add meanwhile
        cumulative, buckets = 0, []
        for bound, c in zip(self._bounds, counts, strict=True):
            cumulative += c
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=total)


class WatchMetrics:
    """What the platform's watch (gateway/watch.py) polls every few seconds, off the tap path."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.postgres_up = Gauge("citycard_postgres_up", "1 if Postgres answered the last check in time", registry=r)
        self.redis_up = Gauge("citycard_redis_up", "1 if Redis answered the last check in time", registry=r)
        shard = ["shard"]
        self.shard_up = Gauge("citycard_shard_up", "1 if the AccountShard answered the last probe in time", shard,
                              registry=r)
        self.shard_ready = Gauge("citycard_shard_ready", "1 if the shard is loaded and serving; 0 while it "
                                 "(re)loads from Postgres or does not answer", shard, registry=r)
        self.shard_restarts = Counter("citycard_shard_restarts", "Shard actor processes replaced (Ray restarted "
                                      "the actor) since this gateway started", shard, registry=r)
        self.shard_reloads = Counter("citycard_shard_reloads", "Shard reloads from Postgres after its first load "
                                     "(a broken journal writer, a restart)", shard, registry=r)
        self.shard_rss = Gauge("citycard_shard_resident_memory_bytes", "Resident memory of the shard's process",
                               shard, registry=r)
        self.shard_cpu = Counter("citycard_shard_cpu_seconds", "CPU time (user + system) of the shard's process",
                                 shard, registry=r)
        self.shard_mismatches = Gauge(
            "citycard_shard_recovery_mismatches", "Journal rows that disagreed with the rebuilt balance at the "
            "shard's last load (0 is the only good value)", shard, registry=r)
        self.state_free = Gauge("citycard_state_free_bytes", "Free bytes on the state directory's filesystem "
                                "(embedded Postgres and Redis live there)", registry=r)
        self.state_size = Gauge("citycard_state_size_bytes", "Size of the state directory's filesystem",
                                registry=r)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._served: list[tuple[Any, threading.Thread]] = []
        r = self.registry
        # the gateway process itself: process_cpu_seconds_total, process_resident_memory_bytes, ...
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("citycard_build", "The running citycard and Python", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        self.taps = Counter("citycard_taps", "Taps answered, by kind and result (names, as in docs/protocol.md)",
                            ["kind", "result"], registry=r)
        self.tap_latency = BatchHistogram(
            "citycard_tap_latency_seconds", "Tap received to answer sent, at the gateway",
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.shard_batch = Histogram(
            "citycard_shard_batch_taps", "Taps per call to an AccountShard", buckets=_BATCH_BUCKETS, registry=r
        )
        self.commit_latency = Histogram(
            "citycard_commit_latency_seconds", "Journal group commit (COPY + commit), as reported by shards",
            ["shard"], buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.shard_call_latency = Histogram(
            "citycard_shard_call_seconds", "Gateway-to-shard call, apply + durable commit",
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.shard_queue = Gauge("citycard_shard_queue_taps", "Taps waiting for a shard call", ["shard"], registry=r)
        self.shard_inflight = Gauge("citycard_shard_inflight_calls", "Calls outstanding per shard", ["shard"], registry=r)
        self.shard_retries = Counter("citycard_shard_retries", "Shard calls retried after a failure", ["shard"], registry=r)
        self.terminals = Gauge("citycard_connected_terminals", "Authenticated terminal connections", registry=r)
        self.connections = Gauge("citycard_open_connections", "Open TCP connections", registry=r)
        self.protocol_errors = Counter("citycard_protocol_errors", "Protocol errors sent, by code", ["code"], registry=r)
        self.busy = Counter("citycard_busy_taps", "Taps answered BUSY because a queue was full", registry=r)
        self.backpressure = Gauge("citycard_backpressure", "1 while a shard queue is past gateway.shard_queue_pause_taps "
                                  "and terminal connections are not read", registry=r)
        self.backpressure_episodes = Counter("citycard_backpressure_episodes",
                                             "Times the gateway stopped reading terminals for a full shard queue",
                                             registry=r)
        self.paused_connections = Gauge("citycard_paused_connections",
                                        "Terminal connections not read now (backpressure)", registry=r)
        self.hotlist_size = Gauge("citycard_hotlist_cards", "Cards on the gateway's hotlist", registry=r)
        self.hotlist_version = Gauge("citycard_hotlist_version", "Hotlist version held by the gateway", registry=r)
        self.hotlist_synced = Gauge(
            "citycard_hotlist_last_sync_timestamp_seconds",
            "When the gateway last found its hotlist equal to Redis's (Unix time)", registry=r)
        self.watch = WatchMetrics(r)
        self.api_refusals = Counter(
            "citycard_api_refusals", "Card-services answers that refuse a caller, by status and why: 401 "
            "(wrong_login, wrong_pin, no_session), 423 pin_locked, 429 (login_source, login_card, pin_token, "
            "kdf_source, pin_in_progress), 503 busy", ["status", "reason"], registry=r,
        )
        self.http_requests = Counter("citycard_http_requests", "Card-services API requests answered, by route "
                                     "template, method and status", ["route", "method", "status"], registry=r)
        self.http_latency = Histogram("citycard_http_request_duration_seconds", "Card-services API request "
                                      "received to response sent, by route template and method",
                                      ["route", "method"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.self_logins = Counter("citycard_self_logins", "Self-service logins that opened a session", registry=r)
        self.audit_reconciled = Counter(
            "citycard_audit_reconciled_entries", "Audit entries the reconciler wrote for journal ops that had none",
            registry=r,
        )
        self.terminal_cutoffs = Counter(
            "citycard_terminal_cutoffs", "Connections closed because their terminal was disabled, by how the "
            "gateway learnt it (event: Redis message; check: its periodic look at Postgres)", ["via"], registry=r,
        )

        # offline (city-pass) uploads, docs/protocol.md section 15
        self.offline_records = Counter("citycard_offline_records", "Offline records answered, by code", ["code"],
                                       registry=r)
        self.offline_batches = Counter(
            "citycard_offline_batches", "Offline uploads answered, by outcome (acked, replayed, bad_mac, "
            "seq_reused, busy, failed)", ["outcome"], registry=r)
        self.offline_tac_failures = Counter("citycard_offline_tac_failures", "Offline records whose TAC did not check",
                                            registry=r)
        self.offline_hotlisted = Counter("citycard_offline_hotlisted_cards",
                                         "Cards put on the hotlist by offline records, by code", ["code"], registry=r)
        self.offline_gaps = Counter("citycard_offline_gaps", "Offline counter gaps found (a later upload may fill them)",
                                    registry=r)
        self.offline_latency = Histogram(
            "citycard_offline_upload_seconds", "Offline upload received to ack sent (MAC, decisions, commit)",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.offline_commit_records = Histogram(
            "citycard_offline_commit_records", "Offline records per group commit", buckets=_BATCH_BUCKETS, registry=r)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint (a thread of its own); returns the bound port (0
        picks a free one). ``stop_serving`` stops it."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._served.append((server, thread))
        return int(server.server_address[1])

    async def stop_serving(self) -> None:
        """Stop every /metrics endpoint started here and wait for its thread to end."""
        served, self._served = self._served, []
        for server, thread in served:
            await asyncio.to_thread(server.shutdown)  # returns once serve_forever has returned
            server.server_close()
            await asyncio.to_thread(thread.join)
