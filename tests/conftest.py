"""Shared fixtures: real services (configured or embedded), per-test schemas, one Ray."""

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from citycard.config.settings import Settings, load_settings

CONFIGURED_DB_URL = os.environ.get("CITYCARD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONFIGURED_REDIS_URL = os.environ.get("CITYCARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class ServiceUrls:
    kind: str  # "configured" or "embedded"
    db_url: str
    redis_url: str


def _reachable(url: str, default_port: int) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def configured_services() -> ServiceUrls:
    """The Postgres and Redis this machine runs. In CI their absence fails the run."""
    missing = [u for u, p in ((CONFIGURED_DB_URL, 5432), (CONFIGURED_REDIS_URL, 6379)) if not _reachable(u, p)]
    if missing:
        msg = f"configured services not reachable: {missing}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return ServiceUrls("configured", CONFIGURED_DB_URL, CONFIGURED_REDIS_URL)


@pytest.fixture(scope="session")
def embedded_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUrls]:
    from citycard.persistence.embedded import start_embedded_postgres, start_embedded_redis

    state = tmp_path_factory.mktemp("embedded-state")
    pg = start_embedded_postgres(state)
    rd = start_embedded_redis(state)
    try:
        yield ServiceUrls("embedded", pg.url, rd.url)
    finally:
        rd.stop()
        pg.stop()


@pytest.fixture(params=["configured", "embedded"])
def services(request: pytest.FixtureRequest) -> ServiceUrls:
    """Both paths: the machine's services and the embedded ones."""
    return request.getfixturevalue(f"{request.param}_services")


def make_settings(urls: ServiceUrls, schema: str, **sections: dict[str, object]) -> Settings:
    overrides: dict[str, dict[str, object]] = {
        "database": {"url": urls.db_url, "schema": schema},
        "redis": {"url": urls.redis_url, "prefix": schema},
        "ray": {"namespace": "citycard-tests"},
        "metrics": {"port": 0},
        "gateway": {"port": 0},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(env={}, overrides=overrides)


async def drop_schema(db_url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def drop_redis_prefix(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.fixture
def schema(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh Postgres schema (and Redis key prefix) for one test, removed afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    urls: ServiceUrls | None = None
    for fixture in ("services", "configured_services", "embedded_services"):
        if fixture in request.fixturenames:
            urls = request.getfixturevalue(fixture)
            break
    if urls is not None:
        asyncio.run(drop_schema(urls.db_url, name))
        asyncio.run(drop_redis_prefix(urls.redis_url, name))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray for the whole session (starting one costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, namespace="citycard-tests", logging_level="ERROR")
    yield
    ray.shutdown()


ROOT = Path(__file__).resolve().parent.parent
