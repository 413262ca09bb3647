"""The region lab's find-max end to end, small: two real platforms, two steps on the same
cities (the second's seqs go on above the first's, so no tap is a replay), then half the max."""

import asyncio

import pytest

from citycard.cli.services import Services
from citycard.region.findmax import FindMaxSpec, run_find_max, summary_lines
from tests.support.services import drop_city_data, make_settings, new_schema

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_two_steps_then_half_of_the_max(configured_services, tmp_path) -> None:  # noqa: ANN001
    prefix = new_schema()
    spec = FindMaxSpec(cities=2, cards=300, terminals=2, visitor_share=0.5, schema_prefix=prefix, start_rate=6.0,
                       max_steps=2, step_s=3.0, half_s=3.0, p99_bound_ms=5000.0)
    base = make_settings(configured_services, prefix)
    services = Services(configured_services.db_url, configured_services.redis_url)
    try:
        report = asyncio.run(run_find_max(base, services, spec, tmp_path))
    finally:
        for code in ("c01", "c02"):
            drop_city_data(configured_services, f"{prefix}_{code}")
    fm = report["find_max"]
    assert [s["rate_per_city"] for s in fm["steps"]] == [6.0, 7.8] and fm["reached_step_limit"]
    assert fm["max_rate_per_city"] == 7.8 and fm["half_max"]["rate_per_city"] == 3.9
    for fig in fm["steps"] + [fm["half_max"]]:
        # every tap answered and charged: a reused seq would be a replay or SEQ_TOO_OLD
        assert fig["failed"] == 0 and fig["cross_city_taps"] > 0, fig
        assert fig["cross_city_ok"] == fig["cross_city_taps"], fig
        assert fig["latency_ms"]["cross_city"]["count"] == fig["cross_city_taps"]
        # CPU of this lab's own processes: the gateway process and its Ray's shards
        assert fig["cpu_s"].get("gateway", 0) > 0 and fig["cpu_s"].get("account shards", 0) > 0, fig["cpu_s"]
    assert report["ok"] and any("max 7.8/s/city" in line for line in summary_lines(report))
