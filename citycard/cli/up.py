"""``citycard up``: run the platform until interrupted."""

import asyncio
import signal
import sys

from ..config.fare_table import load_fare_tables
from ..config.settings import Settings
from ..errors import ConfigError
from ..persistence.platform_lock import PlatformLock, take_platform_lock
from .lifecycle import guard_local_ray, stop_local_ray
from .open_files import raise_open_files
from .preflight import address_in_use, check_up
from .ray_cluster import check_cluster
from .ray_watchdog import RayGuard
from .runtime import Platform
from .services import Services, resolve_services


async def take_up_lock(settings: Settings, services: Services) -> PlatformLock:
    """One platform per schema (and state dir): `citycard up` takes the lock here, and only here,
    so a mode that joins a running platform (extra gateways) can skip this one call."""
    return await take_platform_lock(settings, services.db_url, "up", state_file=bool(services.embedded))


async def _run(settings: Settings, attach: bool) -> int:
    services = resolve_services(settings)
    platform = Platform(settings, services, attach=attach)
    lock: PlatformLock | None = None
    guard: RayGuard | None = None
    try:
        if not attach:  # an attached gateway joins the lock holder's platform
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
        procs = f" ({settings.gateway.processes} processes)" if platform.workers is not None else ""
        print(f"citycard up: gateway on {settings.gateway.host}:{platform.gateway_port}{procs}, metrics {metrics}, "
              f"card services {api}, database {services.db_url}, redis {services.redis_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if lock is not None:
            lock.watch(on_lost=lambda _why: stop.set())  # never run on without the lock
        await stop.wait()
        if lock is not None and lock.lost:
            print(f"citycard up: {lock.lost}; stopping", file=sys.stderr, flush=True)
            return 1
        print("citycard up: stopping", flush=True)
        return 0
    finally:
        await platform.stop()
        if lock is not None:
            await lock.release()
        stop_local_ray(guard)
        services.stop()


def check_attach(settings: Settings) -> None:
    """An attached gateway shares the first one's services: none may be embedded or local."""
    for value, key, env in ((settings.ray.on_cluster, "ray.address", "RAY_ADDRESS"),
                            (settings.database.url, "database.url", "CITYCARD_DATABASE_URL"),
                            (settings.redis.url, "redis.url", "CITYCARD_REDIS_URL")):
        if not value:
            raise ConfigError(f"--attach joins a platform on a cluster: set {key} ({env}) as the first"
                              " gateway has it (docs/deploy.md)")


def up_main(settings: Settings, *, attach: bool = False) -> int:
    import uvloop

    raise_open_files()  # one file per terminal: the hard limit, not the shell's soft one
    if attach:
        check_attach(settings)
    load_fare_tables(settings.fare_table_path())  # a bad table: the line `fares check` prints, before any service
    if settings.ray.on_cluster:  # before any migration: a cluster that is not there, or a missing token file
        check_cluster(settings.ray)
    return uvloop.run(_run(settings, attach))
