"""Fixtures of the chaos tests: their own embedded Postgres and Redis (which the tests stop and
restart; never the machine's), and the results file."""

from collections.abc import Iterator

import pytest

from tests.support.results import ResultsFile
from tests.support.services import OwnServices


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
def results_file(tmp_path_factory: pytest.TempPathFactory) -> ResultsFile:
    path = tmp_path_factory.getbasetemp() / "chaos" / "last_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\nchaos results: {path}")
    return ResultsFile(path, "chaos")
