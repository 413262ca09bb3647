"""The demo's path on the embedded defaults: embedded Postgres and Redis, local Ray, real TCP."""

import asyncio

import pytest

from citycard.cli.demo import run_demo
from citycard.cli.services import Services
from tests.support.services import make_settings

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_demo_on_embedded_services_balances_to_the_fen(embedded_services, schema):
    settings = make_settings(embedded_services, schema)
    services = Services(embedded_services.db_url, embedded_services.redis_url)
    summary = asyncio.run(run_demo(settings, services, n_taps=6000, n_cards=2000, n_terminals=8,
                                   show_progress=False, batch_taps=25, window=2))
    audit = summary["audit"]
    assert summary["ok"], summary
    assert summary["taps_answered"] == 6000
    assert audit["balanced"] and audit["duplicate_seqs"] == 0 and audit["actor_mismatches"] == 0
    assert audit["journal_rows"] == 6000
    assert summary["charged_fen_seen_by_terminals"] == audit["charged_fen"] > 0
    assert summary["retries"]["sent"] == summary["retries"]["answered_with_first_outcome"]
