"""The alert rules load in Prometheus and behave as their unit tests say: ``promtool check
rules`` and ``promtool test rules`` (each alert fires in one case and stays quiet in another).
promtool comes with Debian's prometheus package; without it the test skips, except in CI."""

import os
import shutil
import subprocess

import pytest
import yaml

from tests.support.paths import ROOT

RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "alerts_test.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian package prometheus; .ci/run installs it)")
        pytest.skip("promtool is missing (apt-get install prometheus)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent)


def test_rules_check_clean() -> None:
    r = run("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "WARNING" not in r.stdout + r.stderr


def test_rule_unit_tests_pass_and_cover_every_alert() -> None:
    r = run("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr

    alerts = {rule["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"]
              if "alert" in rule}
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in case["alert_rule_test"]:
            (fires if t["exp_alerts"] else quiet).add(t["alertname"])
    assert alerts - fires == set(), "alerts with no case where they fire"
    assert alerts - quiet == set(), "alerts with no case where they stay quiet"
    for name in ("CitycardTapErrorRate", "CitycardTapLatencyP99High", "CitycardBusyShareHigh",
                 "CitycardCommitLatencyHigh", "CitycardShardDown", "CitycardShardReloading",
                 "CitycardPostgresDown", "CitycardRedisDown", "CitycardHotlistStale",
                 "CitycardDiskAlmostFull", "CitycardDiskFilling"):
        assert name in alerts, name

