"""The services a platform runs on (embedded or configured Postgres and Redis, local Ray or a
cluster), migrations, and the app role's connection: what every CLI command shares."""

import getpass
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import ray

from ..config.settings import Settings
from ..persistence import db
from ..persistence.migrate import migrate
from ..persistence.roles import DbRoles, app_login_url, check_app_login
from .ray_cluster import connect_cluster

log = logging.getLogger(__name__)


@dataclass
class Services:
    db_url: str  # the migrations' login (owner or admin): schema changes only
    redis_url: str
    embedded: list[Any] = field(default_factory=list)
    app_db_url: str = ""  # the platform's own login; empty: db_url's server as the app role

    def app_url(self, settings: Settings) -> str:
        """Where the running platform connects: as the app role, never as the owner."""
        return self.app_db_url or app_login_url(self.db_url, settings.database.app_role)

    def stop(self) -> None:
        for svc in reversed(self.embedded):
            svc.stop()
        self.embedded.clear()


def resolve_services(settings: Settings) -> Services:
    """Configured URLs, or embedded servers under the state dir for what is not configured."""
    embedded: list[Any] = []
    db_url, redis_url = settings.database.url, settings.redis.url
    if not db_url or not redis_url:
        from ..persistence.embedded import start_embedded_postgres, start_embedded_redis

        state = settings.state.path
        state.mkdir(parents=True, exist_ok=True)
        if not db_url:
            svc = start_embedded_postgres(state)
            embedded.append(svc)
            db_url = svc.url
        if not redis_url:
            svc = start_embedded_redis(state)
            embedded.append(svc)
            redis_url = svc.url
    return Services(db_url, redis_url, embedded, app_db_url=settings.database.app_url)


RAY_WORKER_NICENESS = 0  # a cluster's nodes: `RAY_worker_niceness=0 ray start ...` (docs/deploy.md)


def init_ray(settings: Settings) -> None:
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "namespace": settings.ray.namespace,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if not settings.ray.on_cluster:
        kwargs["num_cpus"] = settings.ray.num_cpus or os.cpu_count() or 1
        kwargs["include_dashboard"] = False
        if not settings.ray.address:
            # Ray runs its workers at nice 15 by default, and the shards are workers: on a busy
            # machine the gateway and Postgres then starve the money path (BENCHMARKS.md, issue 17)
            kwargs["_system_config"] = {"worker_niceness": RAY_WORKER_NICENESS}
        ray.init(address=settings.ray.address or None, **kwargs)
    else:  # a cluster: its token auth, and one line when it is not there (cli/ray_cluster.py)
        connect_cluster(settings.ray, kwargs)


def local_ray_session_dir() -> str | None:
    """The session dir of a Ray this process started (None when joined to a cluster, or none)."""
    node = getattr(ray._private.worker, "_global_node", None)  # no public API names it
    if node is None or not getattr(node, "head", False):
        return None
    return str(node.get_session_dir_path())


async def migrate_db(settings: Settings, db_url: str) -> list[str]:
    conn = await db.connect(db_url, settings.database.schema)
    try:
        return await migrate(conn, settings.database.schema, settings.city.account_shards,
                             DbRoles(settings.database.owner_role, settings.database.app_role))
    finally:
        await conn.close()


def cli_operator() -> str:
    """Who a CLI command's audit entries name."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment (some containers)
        return "cli"


async def connect_app(settings: Settings, services: Services) -> Any:
    """A connection as the app role (after ``migrate_db`` made the role and its grants)."""
    conn = await db.connect(services.app_url(settings), settings.database.schema)
    try:
        await check_app_login(conn)
    except BaseException:
        await conn.close()
        raise
    return conn
