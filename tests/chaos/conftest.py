"""Fixtures of the chaos tests: their own embedded Postgres and Redis (which the tests stop and
restart; never the machine's), and the results file."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceUrls


@dataclass
class OwnServices:
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


@pytest.fixture(scope="module")
def own_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServices]:
    from citycard.persistence.embedded import start_embedded_postgres, start_embedded_redis

    state = tmp_path_factory.mktemp("chaos-state")
    svc = OwnServices(state, start_embedded_postgres(state), start_embedded_redis(state))
    assert svc.pg.pid is not None and svc.rd.pid is not None  # ours: the tests may stop them
    try:
        yield svc
    finally:
        svc.rd.stop()
        svc.pg.stop()


@pytest.fixture(scope="session")
def results_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "chaos" / "last_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\nchaos results: {path}")
    return path
