"""Postgres and Redis for tests: their URLs, settings pointing at them, and per-test cleanup."""

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from citycard.config.settings import Settings, load_settings

CONFIGURED_DB_URL = os.environ.get("CITYCARD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONFIGURED_REDIS_URL = os.environ.get("CITYCARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class ServiceUrls:
    kind: str  # "configured" or "embedded"
    db_url: str
    redis_url: str


def reachable(url: str, default_port: int) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def new_schema() -> str:
    """A fresh name for a Postgres schema and the Redis key prefix that goes with it."""
    return f"t_{uuid.uuid4().hex[:12]}"


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


def drop_city_data(urls: ServiceUrls, schema: str) -> None:
    """Remove a test's schema and its Redis keys (from sync code, outside any event loop)."""
    asyncio.run(drop_schema(urls.db_url, schema))
    asyncio.run(drop_redis_prefix(urls.redis_url, schema))


@dataclass
class OwnServices:
    """Embedded Postgres and Redis that this test process started, so a test may stop and
    restart them (never the machine's)."""

    state: Path
    pg: Any  # EmbeddedService
    rd: Any

    @property
    def urls(self) -> ServiceUrls:
        return ServiceUrls("embedded", self.pg.url, self.rd.url)

    def restart_postgres(self) -> None:
        from citycard.persistence.embedded import start_embedded_postgres

        url = self.pg.url
        self.pg = start_embedded_postgres(self.state)
        assert self.pg.url == url and self.pg.pid is not None

    def restart_redis(self) -> None:
        from citycard.persistence.embedded import start_embedded_redis

        url = self.rd.url
        self.rd = start_embedded_redis(self.state)
        assert self.rd.url == url and self.rd.pid is not None
