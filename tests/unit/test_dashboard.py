"""The Grafana dashboard loads, its provisioning files point at it, and every panel's query
names only metrics documented in docs/operations.md (so only metrics the platform exposes: the
e2e scrape test holds the docs to what a live platform serves, and runs these queries)."""

import json
import re

import yaml

from tests.support.paths import ROOT

DASHBOARD = ROOT / "ops" / "grafana" / "citycard.json"
PROVISIONING = ROOT / "ops" / "grafana" / "provisioning"
METRIC = re.compile(r"\b((?:citycard|process|python)_[a-z0-9_]+|up)\b(?!\s*\()")
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def documented() -> set[str]:
    return set(re.findall(r"^\| `([a-z_:]+)` \|", (ROOT / "docs" / "operations.md").read_text(), re.M))


def panels() -> list[dict]:
    out = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def metrics_of(expr: str) -> set[str]:
    names = set()
    for name in METRIC.findall(re.sub(r'"[^"]*"', '""', expr)):  # not inside label values
        for suffix in HISTOGRAM_SERIES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        names.add(name)
    return names


def test_every_panel_queries_documented_metrics_only() -> None:
    known = documented() | {"up"}
    graphs = [p for p in panels() if p["type"] != "row"]
    assert len(graphs) >= 15
    seen: set[str] = set()
    for p in graphs:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            names = metrics_of(t["expr"])
            assert names, (p["title"], t["expr"])
            assert names <= known, (p["title"], names - known)
            seen |= names
    # the operator's questions of issue 16 each have a panel
    for name in ("citycard_taps_total", "citycard_tap_latency_seconds", "citycard_commit_latency_seconds",
                 "citycard_shard_up", "citycard_shard_ready", "citycard_postgres_up", "citycard_redis_up",
                 "citycard_hotlist_last_sync_timestamp_seconds", "citycard_state_free_bytes",
                 "citycard_http_requests_total", "process_cpu_seconds_total", "citycard_shard_cpu_seconds_total"):
        assert name in seen, name


def test_the_extractor_sees_what_it_should() -> None:
    expr = 'histogram_quantile(0.99, sum by (le) (rate(citycard_tap_latency_seconds_bucket{x="citycard_no"}[5m])))'
    assert metrics_of(expr) == {"citycard_tap_latency_seconds"}
    assert metrics_of("rate(citycard_nonexistent_total[1m])") == {"citycard_nonexistent_total"}


def test_layout_and_provisioning() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["templating"]["list"][0]["type"] == "datasource"
    for p in panels():
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "citycard.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
    sources = yaml.safe_load((PROVISIONING / "datasources" / "citycard.yml").read_text())["datasources"]
    assert sources[0]["type"] == "prometheus"
