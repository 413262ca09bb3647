"""``citycard up``: run the platform until interrupted."""

import asyncio
import logging
import signal
import sys

from ..config.fare_table import load_fare_tables
from ..config.settings import Settings
from ..errors import ConfigError
from ..persistence.platform_lock import PlatformLock, take_platform_lock
from .preflight import address_in_use, check_up
from .ray_watchdog import RayGuard, reap_dead_session
from .runtime import Platform, Services, init_ray, local_ray_session_dir, resolve_services

log = logging.getLogger(__name__)


async def take_up_lock(settings: Settings, services: Services) -> PlatformLock:
    """One platform per schema (and state dir): `citycard up` takes the lock here, and only here,
    so a mode that joins a running platform (extra gateways) can skip this one call."""
    return await take_platform_lock(settings, services.db_url, "up", state_file=bool(services.embedded))


def guard_local_ray(settings: Settings, services: Services, command: str) -> RayGuard | None:
    """Reap a dead run's Ray session, start this run's local Ray, and watch it: a kill -9 of this
    process stops the session (and the embedded servers it owns) within seconds. None on a cluster."""
    if settings.ray.address not in ("", "local"):  # joined to a cluster: its processes are not ours
        return None
    state = settings.state.path
    record = state / f"ray-session.{settings.database.schema}.json"
    if reap_dead_session(record):
        log.warning("stopped the Ray processes left by a dead run (%s)", record)
    init_ray(settings)
    session_dir = local_ray_session_dir()
    if session_dir is None:
        return None
    return RayGuard.start(session_dir, record, command, state if services.embedded else None)


async def _run(settings: Settings) -> int:
    services = resolve_services(settings)
    platform = Platform(settings, services)
    lock: PlatformLock | None = None
    guard: RayGuard | None = None
    try:
        lock = await take_up_lock(settings, services)
        check_up(settings)  # ports after the lock: a second `up` on the same config names the first
        guard = guard_local_ray(settings, services, "up")
        try:
            await platform.start()
        except OSError as exc:
            if not address_in_use(exc):
                raise
            raise ConfigError(f"an address citycard up needs was taken while it started: {exc.strerror};"
                              " check gateway.port, metrics.port and api.port") from None
        if guard is not None:
            guard.note_processes()  # with the actors' workers
        metrics = (f"http://{settings.metrics.host}:{platform.metrics_port}/metrics"
                   if platform.metrics_port else "off")
        api = f"http://{settings.api.host}:{platform.api_port}/docs" if platform.api_port else "off"
        print(f"citycard up: gateway on {settings.gateway.host}:{platform.gateway_port}, metrics {metrics}, "
              f"card services {api}, database {services.db_url}, redis {services.redis_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        lock.watch(on_lost=lambda _why: stop.set())  # never run on without the lock
        await stop.wait()
        if lock.lost:
            print(f"citycard up: {lock.lost}; stopping", file=sys.stderr, flush=True)
            return 1
        print("citycard up: stopping", flush=True)
        return 0
    finally:
        await platform.stop()
        if lock is not None:
            await lock.release()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if guard is not None:
            guard.close()
        services.stop()


def up_main(settings: Settings) -> int:
    import uvloop

    load_fare_tables(settings.fare_table_path())  # a bad table: the line `fares check` prints, before any service
    return uvloop.run(_run(settings))
