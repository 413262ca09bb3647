"""Brings the platform up: services (embedded or configured), migrations, Ray actors,
hotlist cache, gateway and metrics; and takes it down again."""

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import ray
import redis.asyncio as aioredis

from ..actors.account_shard import AccountShard
from ..actors.named_actor import NamedActor
from ..actors.shard_client import CallPolicy, ShardClient
from ..actors.terminal_session import TerminalSession
from ..config.fare_table import load_fare_tables
from ..config.settings import Settings
from ..errors import ConfigError
from ..gateway.build import GatewayLimits, build_gateway
from ..gateway.hotlist import HotlistCache, HotlistDeltas, max_hotlist_items
from ..gateway.listener import Gateway
from ..gateway.metrics import Metrics
from ..gateway.router import Router
from ..gateway.sessions import SessionReporter
from ..gateway.terminal_control import TerminalControl
from ..gateway.watch import PlatformWatch
from ..offline.desk import OfflineDesk, issuer_keys, issuers_of
from ..persistence import db, hotlist, terminals
from .ray_cluster import node_order, placement
from .services import Services, connect_app, init_ray, migrate_db

log = logging.getLogger(__name__)


def _servable_fare_text(path: "os.PathLike[str]", max_frame_bytes: int) -> str:
    """The fare table's text for validators (protocol 11.2), if it fits a params answer."""
    text = open(path, encoding="utf-8").read()
    if len(text.encode()) > max_frame_bytes - 1024:
        log.warning("fare table %s is too big to send to validators (%d bytes); they keep their own", path, len(text))
        return ""
    return text


def actor_name(settings: Settings, role: str, index: int) -> str:
    return f"{settings.database.schema}:{role}:{index}"


def actor_config(settings: Settings) -> dict[str, Any]:
    """The settings an actor is created with, less the Ray cluster's token (a creation argument
    is stored in the GCS and shown by Ray's state API; actors never connect to a cluster)."""
    cfg = settings.as_dict()
    cfg["ray"]["auth_token"] = ""
    return cfg


class Platform:
    def __init__(self, settings: Settings, services: Services, *, attach: bool = False) -> None:
        self.settings = settings
        self.attach = attach  # join the actors another `citycard up` started (docs/deploy.md)
        self.services = services
        self.shards: list[Any] = []
        self.shard_client: ShardClient | None = None
        self.sessions: list[Any] = []
        self.metrics = Metrics()
        self.gateway: Gateway | None = None
        self.hotlist: HotlistCache | None = None
        self.reporter: SessionReporter | None = None
        self.router: Router | None = None
        self.terminal_control: TerminalControl | None = None
        self.watch: PlatformWatch | None = None
        self.redis: aioredis.Redis | None = None
        self.pool: Any = None
        self.offline: OfflineDesk | None = None
        self.gateway_port = 0
        self.metrics_port = 0
        self.api: Any = None
        self.api_port = 0
        self.region: Any = None  # interop.wiring.RegionLink when settings have a [region]
        self.link_port = 0
        self.workers: Any = None  # cli/gateway_workers.GatewayWorkers when gateway.processes > 1
        self._stack = AsyncExitStack()
        self._kill_on_stop = True

    async def start(self, *, gateway_port: int | None = None, metrics_port: int | None = None,
                    api_port: int | None = None) -> None:
        """Start every service in the one declared order; each registers its stop on the exit
        stack as it starts, so ``stop`` undoes exactly what started, in reverse. A start that
        fails part way stops what it had started before raising."""
        self._stack = AsyncExitStack()
        try:
            await self._start_services(gateway_port, metrics_port, api_port)
        except BaseException:
            await self.stop()
            raise
        gc.freeze()  # what startup made (Ray, modules) is left out of every full collection (BENCHMARKS.md)

    async def _start_services(self, gateway_port: int | None, metrics_port: int | None,
                              api_port: int | None) -> None:
        s, g = self.settings, self.settings.gateway
        if not self.attach:  # an attached gateway leaves schema changes to the first one
            await migrate_db(s, self.services.db_url)
        await (await connect_app(s, self.services)).close()  # refuse a superuser before any actor starts
        init_ray(s)
        self.shards, self.sessions = self.start_actors()
        self._on_stop("ray actors", self._kill_actors)
        load_s = s.ledger.load_timeout_ms / 1000.0  # a big city's shards load for minutes
        await asyncio.gather(*[a.ensure_loaded.remote(load_s) for a in self.shards],
                             *[a.ensure_loaded.remote() for a in self.sessions])
        self._on_stop("session flush", self._flush_sessions)  # after the gateway and reporter stopped
        self.pool = await db.create_pool(self.services.app_url(s), s.database.schema, s.database.pool_size)
        self._on_stop("postgres pool", self._close_pool)
        self.redis = redis = aioredis.from_url(self.services.redis_url)
        self._on_stop("redis", redis.aclose)
        self.hotlist = cache = HotlistCache(redis, s.redis.prefix, rebuild=self._rebuild_hotlist, metrics=self.metrics)
        await cache.start()
        self._on_stop("hotlist", cache.stop)
        retries = self.metrics.shard_retries
        self.shard_client = ShardClient(self.shards, CallPolicy.from_settings(s),
                                        on_retry=lambda shard, _exc: retries.labels(str(shard)).inc())
        fares = load_fare_tables(s.fare_table_path())
        fare_text = _servable_fare_text(s.fare_table_path(), g.max_frame_bytes)
        own_issuer, visitor_issuers = issuers_of(s, fares)
        self.offline = OfflineDesk(self.pool, redis, s.redis.prefix, issuer_keys(s),
                                   bytes.fromhex(s.card.batch_master_key_hex), self.metrics,
                                   own_issuer=own_issuer, visitor_issuers=visitor_issuers)
        self.offline.start()
        self._on_stop("offline uploads", self.offline.stop)  # after the gateway stopped
        parts = build_gateway(
            self.shard_client, self.sessions, lambda: cache.cards, self.metrics, GatewayLimits.from_settings(g),
            fare_version=lambda: fares.version_at(int(time.time() * 1000)), hotlist_version=lambda: cache.version,
            hotlist_delta=HotlistDeltas(partial(hotlist.pool_delta, self.pool), lambda: cache.version,
                                        max_hotlist_items(g.max_frame_bytes)),
            fare_table_text=(lambda: fare_text) if fare_text else None, offline=self.offline)
        self.router, self.reporter = parts.router, parts.reporter
        parts.reporter.start()
        self._on_stop("session reports", parts.reporter.stop)
        self._on_stop("router", parts.router.close)  # stops before the reporter: its last answers count
        if s.region is not None:  # the inter-platform link (docs/interop.md); absent: a single city
            from ..interop.wiring import start_region

            self.region = await start_region(s.region, self.pool, parts.router, self.metrics.registry, fares,
                                             lambda card_no: card_no in cache.cards)
            self.link_port = self.region.server.port
            self._on_stop("region link", self.region.stop)  # after the gateway: no more visitors' taps
        self.gateway = Gateway(parts.ctx, g.host, g.port if gateway_port is None else gateway_port,
                               reuse_port=g.processes > 1)
        self.gateway_port = await self.gateway.start()
        self._on_stop("gateway", self.gateway.stop)
        if g.processes > 1 and not self.attach:
            await self._start_workers(g.processes)
        self.terminal_control = TerminalControl(parts.ctx, redis, s.redis.prefix, self._disabled_terminals,
                                                self.metrics, check_interval_s=g.terminal_check_ms / 1000.0)
        await self.terminal_control.start()
        self._on_stop("terminal control", self.terminal_control.stop)
        self.watch = PlatformWatch(self.metrics.watch, probes=[partial(_probe, a) for a in self.shards],
                                   check_postgres=self._check_postgres, check_redis=redis.ping,
                                   state_dir=s.state.path, interval_s=WATCH_INTERVAL_S, timeout_s=WATCH_TIMEOUT_S)
        self.watch.start()
        self._on_stop("platform watch", self.watch.stop)
        mport = s.metrics.port if metrics_port is None else metrics_port
        if mport or metrics_port == 0:
            self.metrics_port = self.metrics.serve(s.metrics.host, mport)
            self._on_stop("metrics server", self.metrics.stop_serving)
        aport = s.api.port if api_port is None else api_port
        if aport > 0 or api_port == 0:  # settings: 0 disables; argument: 0 any free port, -1 none
            await self._start_api(aport, fares)
            self._on_stop("http api", self.api.stop)

    async def _start_workers(self, processes: int) -> None:
        """The other gateway processes on this port (cli/gateway_workers.py)."""
        from .gateway_workers import GatewayWorkers, worker_settings

        s, svc = self.settings, self.services
        base = actor_config(s)
        base["ray"]["auth_token"] = s.ray.auth_token  # a cluster's token: on the worker's stdin only
        self.workers = GatewayWorkers([
            worker_settings(base, index=i, db_url=svc.db_url, app_db_url=svc.app_url(s), redis_url=svc.redis_url,
                            ray_address=ray.get_runtime_context().gcs_address, port=self.gateway_port)
            for i in range(1, processes)])
        self._on_stop("gateway processes", self.workers.stop)  # registered first: a failed start stops those up
        await self.workers.start()

    def _on_stop(self, name: str, stop: Callable[[], Awaitable[Any]]) -> None:
        """Register a started service's stop, bounded, so one stuck part cannot hold the rest."""

        async def bounded() -> None:
            try:
                async with asyncio.timeout(STOP_STEP_TIMEOUT_S):
                    await stop()
            except Exception as exc:  # noqa: BLE001 - keep going; report what did not stop cleanly
                log.warning("stopping %s: %r", name, exc)

        self._stack.push_async_callback(bounded)

    async def _start_api(self, port: int, fares: Any) -> None:
        from ..api.context import ApiContext
        from ..api.server import ApiServer

        categories = frozenset(k for v in fares.versions for k in v.v.medical.fund_percent)
        ctx = ApiContext(self.settings, self.pool, self.redis, self.shard_client, insurance_categories=categories,
                         metrics=self.metrics)
        self.api = ApiServer(ctx, self.settings.api.host, port)
        self.api_port = await self.api.start()

    def start_actors(self) -> tuple[list[Any], list[Any]]:
        s = self.settings
        cfg = actor_config(s)
        ns = s.ray.namespace
        url = self.services.app_url(s)
        if self.attach:
            return self._find_actors()
        nodes = node_order()  # shard i on node i mod n; one node: as local mode always did
        shards = [
            AccountShard.options(name=actor_name(s, "account", i), namespace=ns, get_if_exists=True,
                                 **placement(nodes, i))
            .remote(i, cfg, url)
            for i in range(s.city.account_shards)
        ]
        sessions = [
            TerminalSession.options(name=actor_name(s, "session", i), namespace=ns, get_if_exists=True,
                                    **placement(nodes, i))
            .remote(i, cfg, url)
            for i in range(s.city.session_shards)
        ]
        return shards, sessions

    def _find_actors(self) -> tuple[list[Any], list[Any]]:
        """An attached gateway's actors: the ones the first ``citycard up`` started, never new ones;
        each found again by name when its call finds it dead (the first gateway restarted)."""
        s = self.settings
        shards: list[Any] = []
        sessions: list[Any] = []
        for role, count, into in (("account", s.city.account_shards, shards),
                                  ("session", s.city.session_shards, sessions)):
            for i in range(count):
                lookup = partial(ray.get_actor, actor_name(s, role, i), namespace=s.ray.namespace)
                try:
                    into.append(NamedActor(actor_name(s, role, i), lookup(), lookup))
                except ValueError:
                    raise ConfigError(f"--attach: no platform runs on the Ray cluster at {s.ray.address} for"
                                      f" database.schema {s.database.schema} in ray.namespace {s.ray.namespace}"
                                      f" (no actor {actor_name(s, role, i)}): start the first gateway"
                                      " with `citycard up`, and give every gateway the same settings") from None
        return shards, sessions

    async def _rebuild_hotlist(self) -> int:
        async with self.pool.acquire() as conn:
            return await hotlist.rebuild_redis(conn, self.redis, self.settings.redis.prefix)

    async def _check_postgres(self) -> None:
        """A connection of its own: Postgres up means it answers, not that the pool has room."""
        conn = await db.connect(self.services.app_url(self.settings), self.settings.database.schema)
        try:
            await conn.fetchval("SELECT 1")
        finally:  # runs after the watch's bound fired too: a hung server must not hold the watch
            try:
                await conn.close(timeout=PG_CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - the check's own outcome is the answer
                conn.terminate()

    async def _disabled_terminals(self, terminal_ids: list[int]) -> list[int]:
        return await terminals.disabled_among(self.pool, terminal_ids)

    async def hotlist_add(self, card_no: int, reason: str) -> int:
        async with self.pool.acquire() as conn:
            return await hotlist.add(conn, self.redis, self.settings.redis.prefix, card_no, reason)

    async def hotlist_remove(self, card_no: int, reason: str) -> int:
        async with self.pool.acquire() as conn:
            return await hotlist.remove(conn, self.redis, self.settings.redis.prefix, card_no, reason)

    async def shard_stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*[a.stats.remote() for a in self.shards]))

    async def stop(self, *, kill_actors: bool = True) -> None:
        """Stop what started, in reverse order (``kill_actors=False`` leaves the Ray actors
        running, for a test that restarts the platform on them)."""
        self._kill_on_stop = kill_actors
        await self._stack.aclose()

    async def __aenter__(self) -> "Platform":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _flush_sessions(self) -> None:
        await asyncio.gather(*[a.flush.remote() for a in self.sessions])

    async def _close_pool(self) -> None:
        try:
            await self.pool.close()
        finally:
            self.pool.terminate()  # a no-op once close() finished

    async def _kill_actors(self) -> None:
        if self._kill_on_stop and not self.attach:  # attached: the actors are the first gateway's
            for a in self.shards + self.sessions:
                ray.kill(a, no_restart=True)


async def _probe(actor: Any) -> Any:
    return await actor.probe.remote()


STOP_STEP_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 5.0  # the platform watch's poll (gateway/watch.py); scrapes are ~15 s apart
# Each check's bound: under a saturating load test (2 cores) a shard's probe took over 2 s now
# and then, so 2 s read as "down" while it served; below the interval, so polls never overlap.
WATCH_TIMEOUT_S = 4.0
PG_CLOSE_TIMEOUT_S = 1.0
