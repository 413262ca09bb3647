"""``citycard up``: run the platform until interrupted."""

import asyncio
import signal

from ..config.settings import Settings
from ..errors import ConfigError
from .preflight import address_in_use, check_up
from .ray_cluster import check_cluster
from .runtime import Platform, resolve_services


async def _run(settings: Settings, attach: bool) -> None:
    services = resolve_services(settings)
    platform = Platform(settings, services, attach=attach)
    try:
        try:
            await platform.start()
        except OSError as exc:
            if not address_in_use(exc):
                raise
            raise ConfigError(f"an address citycard up needs was taken while it started: {exc.strerror};"
                              " check gateway.port, metrics.port and api.port") from None
        metrics = (f"http://{settings.metrics.host}:{platform.metrics_port}/metrics"
                   if platform.metrics_port else "off")
        api = f"http://{settings.api.host}:{platform.api_port}/docs" if platform.api_port else "off"
        print(f"citycard up: gateway on {settings.gateway.host}:{platform.gateway_port}, metrics {metrics}, "
              f"card services {api}, database {services.db_url}, redis {services.redis_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("citycard up: stopping", flush=True)
    finally:
        await platform.stop()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        services.stop()


def check_attach(settings: Settings) -> None:
    """An attached gateway shares the first one's services: none may be embedded or local."""
    for value, key, env in ((settings.ray.address, "ray.address", "RAY_ADDRESS"),
                            (settings.database.url, "database.url", "CITYCARD_DATABASE_URL"),
                            (settings.redis.url, "redis.url", "CITYCARD_REDIS_URL")):
        if not value:
            raise ConfigError(f"--attach joins a platform on a cluster: set {key} ({env}) as the first"
                              " gateway has it (docs/deploy.md)")


def up_main(settings: Settings, *, attach: bool = False) -> int:
    import uvloop

    if attach:
        check_attach(settings)
    check_up(settings)
    if settings.ray.address:  # before any migration: a cluster that is not there, or a missing token file
        check_cluster(settings.ray)
    uvloop.run(_run(settings, attach))
    return 0
