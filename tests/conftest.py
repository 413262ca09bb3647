"""Shared fixtures: real services (configured or embedded), per-test schemas, one Ray.
The helpers behind them live in tests/support/."""

import asyncio
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.support.services import (
    CONFIGURED_DB_URL,
    CONFIGURED_REDIS_URL,
    ServiceUrls,
    drop_redis_prefix,
    drop_schema,
    new_schema,
    reachable,
)

# The machine is shared and its load varies: Hypothesis' timing checks (a slow example, slow
# input generation) would fail a test for the machine's load, not for the code under test.
hypothesis_settings.register_profile("citycard", deadline=None, suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("citycard")


@pytest.fixture(scope="session")
def configured_services() -> ServiceUrls:
    """The Postgres and Redis this machine runs. In CI their absence fails the run."""
    missing = [u for u, p in ((CONFIGURED_DB_URL, 5432), (CONFIGURED_REDIS_URL, 6379)) if not reachable(u, p)]
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


@pytest.fixture
def schema(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh Postgres schema (and Redis key prefix) for one test, removed afterwards."""
    name = new_schema()
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
        from citycard.cli.services import RAY_WORKER_NICENESS

        ray.init(num_cpus=2, include_dashboard=False, namespace="citycard-tests", logging_level="ERROR",
                 _system_config={"worker_niceness": RAY_WORKER_NICENESS})  # as the product's own Ray
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def pcscd() -> Iterator[None]:
    """pcscd with vsmartcard's vpcd, for the reader and card tests: the running one, or one
    started for the session. Missing, it skips those tests, except in CI, where it fails them."""
    from tests.support.pcsc import running_pcscd

    with running_pcscd() as why_not:
        if why_not is not None:
            if os.environ.get("CI"):
                pytest.fail(why_not)
            pytest.skip(why_not)
        yield
