"""The load lab's offline mode as an operator runs it: online taps and validators uploading
signed batches of offline records through the real gateway, a replayed batch and forged TACs,
and the offline audit passing against Postgres (docs/loadtest.md)."""

import asyncio
import json
import signal
import subprocess
import sys

import pytest

from citycard.config.settings import load_settings
from citycard.domain.offline import IssuerKeys
from citycard.loadtest.audit import check_offline, offline_tac_checker
from citycard.loadtest.offline_prep import LOAD_FEN
from citycard.loadtest.offline_sender import read_columns
from citycard.persistence import db
from tests.support.cli import citycard_env, gateway_port

pytestmark = pytest.mark.services


def _loadtest(env: dict[str, str], out_dir, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "loadtest", *args, "--json", "--report-dir", str(out_dir)],
        env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and proc.returncode == 0, (report["errors"], report.get("offline"), report["audit"])
    return report


def test_online_taps_and_offline_uploads_audit_together(configured_services, schema, tmp_path):
    env = citycard_env(configured_services, schema)
    out_dir = tmp_path / "report"
    report = _loadtest(env, out_dir, "--scale", "0.0005", "--terminals", "16", "--senders", "1", "--timeout-ms",
                       "20000", "--schema", schema, "--rate", "300", "--duration", "5", "--offline-rate", "800",
                       "--offline-batch", "100", "--offline-terminals", "4", "--offline-cards", "300",
                       "--offline-replay-share", "0.3", "--offline-forged", "2")
    off = report["offline"]
    audit = off["audit"]
    # the generator's records: every one journaled once, as the card made it
    assert off["records_made"] > 2000 and off["records_acked"] == off["records_made"]
    assert audit["records_made"] + audit["forged_made"] == off["records_made"]
    assert audit["journaled"] == audit["journaled_matching"] == audit["records_made"]
    assert audit["missing"] == audit["extra"] == audit["keys_twice"] == 0
    # shadows equal the records and the chips; every TAC re-checked by the audit
    assert audit["cards"] == 300 and audit["shadow_mismatches"] == audit["chip_mismatches"] == 0
    assert audit["tacs_checked"] == audit["journaled"] and audit["tacs_bad"] == 0
    # forged TACs: BAD_TAC, kept aside, the cards hotlisted; nothing else refused
    assert off["forged_made"] == 2 and off["codes"]["BAD_TAC"] == 2
    assert audit["forged_rejected"] == audit["forged_hotlisted"] == 2 and audit["unexpected_rejects"] == 0
    assert off["codes"]["ACCEPTED"] == audit["records_made"]
    # replayed batches (a lost ack) answered identically, nothing journaled twice
    assert off["replays_sent"] > 0 and off["replays_matched"] == off["replays_sent"]
    # the figures: rate, upload latency, the generator's CPU; and the online taps' audit too
    assert off["acked_records_per_s"] > 0 and 0 < off["upload_latency_ms"]["p50"] <= off["upload_latency_ms"]["p99"]
    assert off["generator_cpu_us_per_record"] > 0
    assert report["audit"]["ok"] and report["codes"]["OK"] > 0
    assert "offline uploader (load generator)" in report["processes"]["cpu_s"]
    assert "offline:" not in " ".join(report["errors"])
    html = (out_dir / "report.html").read_text()
    assert "Offline (city-pass) uploads" in html and "tacs_checked" in html

    # The audit fails loudly: one record's amount changed behind the host's back, another lost.
    asyncio.run(_tamper_and_audit(configured_services.db_url, schema, off["files"], audit))


async def _tamper_and_audit(db_url: str, schema: str, files: dict, before: dict) -> None:
    c = load_settings(env={}).card
    checker = offline_tac_checker(IssuerKeys.of_hex(c.issuer_mpk_hex, c.issuer_mlk_hex, c.issuer_mtk_hex))
    records, cards = read_columns(files["records_file"]), read_columns(files["cards_file"])
    openings = {card: LOAD_FEN for card in cards[0]}  # a fresh city: each card's first load
    conn = await db.connect(db_url, schema)
    try:
        again = await check_offline(conn, records, cards, openings, checker)
        assert again.ok and again.as_dict() == before
        changed, lost = await conn.fetch("SELECT card_no, offline_counter FROM offline_records"
                                         " ORDER BY card_no, offline_counter LIMIT 2")
        await conn.execute("UPDATE offline_records SET amount_fen = amount_fen + 1"
                           " WHERE card_no = $1 AND offline_counter = $2", *changed)
        await conn.execute("DELETE FROM offline_records WHERE card_no = $1 AND offline_counter = $2", *lost)
        bad = await check_offline(conn, records, cards, openings, checker)
    finally:
        await conn.close()
    assert not bad.ok
    assert bad.missing == 1 and bad.journaled == before["journaled"] - 1
    assert bad.journaled_matching == before["journaled"] - 2 and bad.tacs_bad == 1
    assert bad.shadow_mismatches == 1 and bad.chip_mismatches == 1  # both on the one card


def test_offline_runs_against_a_running_platform_follow_each_other(configured_services, schema, tmp_path):
    """Against ``citycard up``: the validators are registered by the lab, a second run's batch
    seqs and card counters continue after the first's, and each run's audit covers its own."""
    env = citycard_env(configured_services, schema)
    seed = subprocess.run([sys.executable, "-m", "citycard.cli.main", "city", "seed", "--scale", "0.0005"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert seed.returncode == 0, seed.stderr
    up = subprocess.Popen([sys.executable, "-m", "citycard.cli.main", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    args = ["--terminals", "8", "--rate", "200", "--duration", "3", "--offline-rate", "400", "--offline-batch",
            "50", "--offline-terminals", "2", "--offline-cards", "40", "--offline-forged", "1"]
    try:
        line = up.stdout.readline()
        assert "gateway on" in line, up.stderr.read() if up.poll() is not None else line
        target = f"127.0.0.1:{gateway_port(line)}"
        first = _loadtest(env, tmp_path / "first", "--target", target, *args)
        second = _loadtest(env, tmp_path / "second", "--target", target, *args)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
    for report in (first, second):
        off = report["offline"]
        assert off["audit"]["journaled"] == off["audit"]["records_made"] > 500
        assert off["codes"].get("BAD_TAC") == 1 and set(off["codes"]) == {"ACCEPTED", "BAD_TAC"}
    # ~40 cards over ~2,400 records: the second run's records went onto the first's cards, after them
    assert asyncio.run(_count_batches(configured_services.db_url, schema)) == \
        first["offline"]["batches_acked"] + second["offline"]["batches_acked"]


async def _count_batches(db_url: str, schema: str) -> int:
    conn = await db.connect(db_url, schema)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM offline_batches"))
    finally:
        await conn.close()
