"""The region lab end to end, small: three real platforms in this process on the machine's
Postgres (a schema each), own and visitors' taps over the terminal protocol, one city's link
down and back, settlement, clearing and the audit (docs/interop.md, "The region lab")."""

import asyncio

import pytest

from citycard.cli.runtime import Services
from citycard.region.lab import LabSpec, run_lab
from citycard.region.report import render_html
from tests.support.services import drop_city_data, make_settings, new_schema

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_three_cities_with_an_outage_clear_and_audit(configured_services, tmp_path) -> None:  # noqa: ANN001
    prefix = new_schema()
    spec = LabSpec(cities=3, cards=300, terminals=2, duration_s=12.0, taps_per_s=10.0, visitor_share=0.5,
                   schema_prefix=prefix, down_city=2, outage_from=0.25, outage_until=0.6)
    base = make_settings(configured_services, prefix)
    services = Services(configured_services.db_url, configured_services.redis_url)
    try:
        report = asyncio.run(run_lab(base, services, spec, tmp_path))
    finally:
        for code in ("c01", "c02", "c03"):
            drop_city_data(configured_services, f"{prefix}_{code}")
    audit = report["audit"]
    assert audit["ok"], audit["problems"]
    assert report["ok"]
    assert all(audit["checks"].values()) and len(audit["checks"]) >= 8
    # the outage: C02's cards were stood in elsewhere, and every stand-in was decided when it came back
    assert report["outage"]["standins_for_down_city"] > 0
    assert report["outage"]["pending_after_wait"] == 0
    assert any(k.endswith(":confirmed") for k in report["totals"]["standins"])
    # visitors' taps went across and were cleared; positions net to zero
    assert report["totals"]["cross_city_ok"] > 0 and report["totals"]["cleared_records"] > 0
    assert sum(report["clearing"]["multilateral_fen"].values()) == 0
    # each bad delivery refused for its own reason, changing nothing
    assert {r["what"]: r["code"] for r in report["refusals"]} == {
        "wrong sum": "BAD_MANIFEST", "forged signature": "BAD_SIGNATURE", "duplicate delivery": "DUPLICATE_FILE"}
    assert all(r["changed_nothing"] for r in report["refusals"])
    page = render_html(report)
    assert page.count("data:image/png;base64,") == 3
    # each city's own settlement window closed, its bus company's line holding its home rides
    for closing in report["settlement_windows"].values():
        assert closing["state"] == "closed" and closing["lines"] == 1 and closing["gross_fen"] > 0
