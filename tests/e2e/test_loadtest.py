"""The load lab as an operator runs it: real processes, real services, real sockets, and the
audit against Postgres passing at the end."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.cli import citycard_env, gateway_port

pytestmark = pytest.mark.services

SMALL = ["--scale", "0.0005", "--terminals", "24", "--senders", "2", "--timeout-ms", "20000"]


def _loadtest(env: dict[str, str], tmp_path, *args: str, timeout_s: float = 300) -> dict:
    out_dir = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "loadtest", *args, "--json", "--report-dir", str(out_dir)],
        env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert (out_dir / "report.json").exists() and (out_dir / "report.html").exists()
    assert proc.returncode == (0 if report["ok"] else 1), proc.stderr[-3000:]
    return report


def test_small_city_steady_run_answers_durably_and_audits(configured_services, schema, tmp_path):
    env = citycard_env(configured_services, schema)
    report = _loadtest(env, tmp_path, *SMALL, "--schema", schema, "--rate", "800", "--duration", "6",
                       "--replay-share", "0.05")
    assert report["ok"], report["errors"] or report["audit"]
    totals, audit = report["totals"], report["audit"]
    # open loop: what was scheduled was answered, none timed out or got lost
    assert totals["scheduled"] > 3000
    assert totals["answered"] == totals["scheduled"] and totals["timeouts"] == 0 and totals["shed"] == 0
    assert audit["answered_checked"] == totals["answered"] - report["codes"].get("DUPLICATE_SEQ", 0) \
        - report["codes"].get("SEQ_TOO_OLD", 0)
    assert audit["answered_missing_rows"] == 0 and audit["duplicate_seqs"] == 0 and audit["balanced"]
    assert audit["actor_mismatches"] == 0
    assert audit["charged_fen_told_to_terminals"] == audit["charged_fen"] > 0
    assert audit["replays_sent"] > 0 and audit["replays_matched"] == audit["replays_sent"]
    assert report["codes"]["OK"] > 0
    assert 0 < totals["latency_ms"]["p50"] <= totals["latency_ms"]["p99"] <= totals["latency_ms"]["max"]
    assert len(report["timeline"]) >= 6 and report["cdf"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "PASS" in html


def test_hotlist_storm_blocks_cards_during_load(configured_services, schema, tmp_path):
    env = citycard_env(configured_services, schema)
    report = _loadtest(env, tmp_path, *SMALL, "--schema", schema, "--scenario", "hotlist-storm",
                       "--rate", "600", "--duration", "8", "--storm-rate", "10")
    assert report["ok"], report["errors"] or report["audit"] or report.get("hotlist_storm")
    storm = report["hotlist_storm"]
    assert storm["reported"] == storm["planned"] > 0 and storm["failed"] == 0
    assert report["codes"].get("CARD_BLOCKED", 0) > 0  # taps on the lost cards were refused


def test_find_max_steps_up_and_measures_half_the_maximum(configured_services, schema, tmp_path):
    env = citycard_env(configured_services, schema)
    report = _loadtest(env, tmp_path, *SMALL, "--schema", schema, "--find-max", "--rate", "1500",
                       "--step-seconds", "2", "--p99-bound-ms", "1000", timeout_s=600)
    fm = report["find_max"]
    assert fm["steps"] and fm["max_accepted_per_s"] > 0
    assert fm["steps"][-1]["stop_reason"] or sum(not s["retried"] for s in fm["steps"]) == 12
    assert fm["half_max"]["accepted_per_s"] > 0
    assert report["audit"]["ok"], report["audit"]


def test_against_a_running_platform(configured_services, schema, tmp_path):
    """citycard city seed, citycard up, then citycard loadtest --target: the city comes from
    the platform's database, seqs continue after what its journal holds."""
    env = citycard_env(configured_services, schema)
    seed = subprocess.run([sys.executable, "-m", "citycard.cli.main", "city", "seed", "--scale", "0.0005"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert seed.returncode == 0, seed.stderr
    up = subprocess.Popen([sys.executable, "-m", "citycard.cli.main", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        line = up.stdout.readline()  # "citycard up: gateway on 127.0.0.1:PORT, ..."
        assert "gateway on" in line, up.stderr.read() if up.poll() is not None else line
        port = gateway_port(line)
        first = _loadtest(env, tmp_path, "--target", f"127.0.0.1:{port}", "--terminals", "12",
                          "--rate", "500", "--duration", "4")
        second = _loadtest(env, tmp_path, "--target", f"127.0.0.1:{port}", "--terminals", "12",
                           "--rate", "500", "--duration", "4")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
    for report in (first, second):
        assert report["ok"], report["errors"] or report["audit"]
        assert report["codes"].get("DUPLICATE_SEQ", 0) == 0  # the second run's seqs follow the first's
    assert second["audit"]["journal_rows"] > first["audit"]["journal_rows"]


def test_bad_arguments_are_refused_before_anything_starts(tmp_path):
    env = dict(os.environ)
    started = time.monotonic()
    for args in (["--rate", "0"], ["--batch", "5000"], ["--scale", "0"], ["--target", "nonsense"]):
        proc = subprocess.run([sys.executable, "-m", "citycard.cli.main", "loadtest", *args], env=env,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2 and "citycard:" in proc.stderr, (args, proc.stderr)
    assert time.monotonic() - started < 60
