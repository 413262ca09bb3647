"""The load lab's report writer: report.json round-trips, report.html is self-contained (PNG
plots as data URIs, escaped text, a clear audit verdict) and copes with missing data, and the
end-of-run summary says what matters."""

import base64
import copy
import json
import re

import pytest

from citycard.loadtest.report import render_html, summary_lines, write_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGE_RE = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _full_report() -> dict:
    timeline = [
        {"t_s": float(t), "offered": 1000, "answered": 990 if t != 3 else 400,
         "timeouts": 0 if t != 3 else 600, "p50_ms": 1.0 + t / 10, "p90_ms": 2.5,
         "p99_ms": 8.0 if t != 3 else 900.0, "max_ms": 20.0 if t != 3 else 1500.0}
        for t in range(6)
    ]
    return {
        "run": {"scenario": "steady <script>alert(1)</script>", "target": "127.0.0.1:7700",
                "started_at": "2025-01-02T03:04:05+00:00", "duration_s": 6.0,
                "profile": "steady 1000/s", "senders": 2, "terminals": 500, "cards": 10_000,
                "account_shards": None, "seed": 7, "command": "citycard load steady --rate 1000",
                "linger_ms": 1.0, "timeout_ms": 10_000.0},
        "totals": {"scheduled": 6000, "answered": 5350, "timeouts": 600, "shed": 50,
                   "retries": 3, "late_answers": 12, "offered_per_s": 1000.0,
                   "accepted_per_s": 891.7, "max_send_lag_ms": 4.2,
                   "latency_ms": {"p50": 1.2, "p90": 2.5, "p99": 12.3, "p99.9": 950.0,
                                  "max": 1500.0, "mean": 3.1}},
        "timeline": timeline,
        "cdf": [[0.0, 0.4], [50.0, 1.2], [90.0, 2.5], [99.0, 12.3], [99.9, 950.0],
                [100.0, 1500.0]],
        "codes": {"OK": 5300, "INSUFFICIENT_FUNDS": 40, "CARD_BLOCKED": 10},
        "errors": ["connection reset by 127.0.0.1:7700"],
        "audit": {"ok": True, "balanced": True, "journal_rows": 5300, "duplicate_seqs": 0,
                  "answered_checked": 5350, "answered_missing_rows": 0,
                  "answered_extra_rows": 0, "charged_fen": 1_234_500,
                  "opening_fen": 100_000_000, "balances_fen": 98_765_500},
        "baselines": {"naive_sql_taps_per_s": 850.5, "naive_connections": 16,
                      "raw_copy_rows_per_s": 250_000.0, "copy_rows": 100_000,
                      "ratio_to_naive": 1.05, "share_of_copy": 0.0036},
        "find_max": {"steps": [
            {"rate_per_s": 1000.0, "accepted_per_s": 1000.0, "p99_ms": 3.0, "timeouts": 0,
             "stop_reason": None},
            {"rate_per_s": 2000.0, "accepted_per_s": 1990.0, "p99_ms": 9.0, "timeouts": 0,
             "stop_reason": None},
            {"rate_per_s": 4000.0, "accepted_per_s": 2500.0, "p99_ms": 400.0, "timeouts": 90,
             "stop_reason": "p99 above bound"}],
            "max_accepted_per_s": 1990.0, "p99_bound_ms": 50.0,
            "half_max": {"rate_per_s": 995.0, "accepted_per_s": 995.0, "p99_ms": 2.9}},
        "processes": {"cpu_s": {"gateway": 3.0}, "memory_mb": [
            {"t_s": float(t), "gateway": 150.0 + t, "account shards": 220.0, "postgres": 90.0 + 2 * t}
            for t in range(6)]},
        "ok": True,
    }


def _empty_report() -> dict:
    report = _full_report()
    report.update(timeline=[], cdf=[], codes={}, errors=[], audit=None, baselines=None, processes={},
                  find_max=None, ok=False)
    del report["run"]["account_shards"]
    return report


@pytest.fixture(scope="module")
def full_page() -> str:
    return render_html(_full_report())  # rendered once: plotting is the slow part


def _png_images(page: str) -> list[bytes]:
    return [base64.b64decode(data, validate=True) for data in IMAGE_RE.findall(page)]


def test_write_reports_round_trips_json_and_writes_html(tmp_path):
    report = _full_report()
    json_path, html_path = write_reports(copy.deepcopy(report), tmp_path / "out" / "run1")
    assert json_path == tmp_path / "out" / "run1" / "report.json"
    assert html_path == tmp_path / "out" / "run1" / "report.html"
    with json_path.open(encoding="utf-8") as file:
        assert json.load(file) == report
    assert list(json.loads(json_path.read_text())) == list(report)  # keys keep their order
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_html_embeds_six_png_plots_and_is_self_contained(full_page):
    page = full_page
    images = _png_images(page)
    assert len(images) == 6
    assert "Memory over time, by process group" in page
    assert all(image.startswith(PNG_MAGIC) for image in images)
    assert "no data" not in page
    for external in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert external not in page


def test_html_without_find_max_has_five_plots():
    report = _full_report()
    report["find_max"] = None
    assert len(_png_images(render_html(report))) == 5


def test_html_escapes_text_and_shows_audit_verdict(full_page):
    assert "<script>" not in full_page
    assert "steady &lt;script&gt;alert(1)&lt;/script&gt;" in full_page
    assert "Audit: PASS" in full_page
    assert '<p class="verdict pass">OK</p>' in full_page

    failed = _empty_report()  # no plots: faster, and the verdict does not depend on them
    failed["audit"] = _full_report()["audit"] | {"ok": False}
    page = render_html(failed)
    assert "Audit: FAIL" in page
    assert '<p class="verdict fail">FAILED</p>' in page


def test_empty_report_renders_and_says_no_data(tmp_path):
    report = _empty_report()
    page = render_html(report)
    assert _png_images(page) == []
    assert page.count("no data") == 5
    assert "audit not run" in page
    _, html_path = write_reports(report, tmp_path)
    assert html_path.read_text(encoding="utf-8") == page


@pytest.mark.parametrize("field, value", [
    ("timeline", [{"t_s": 0.0, "offered": 10, "answered": 0, "timeouts": 10,
                   "p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}]),
    ("timeline", [{"t_s": 0.0}]),
    ("cdf", [[100.0, 5.0]]),
    ("codes", {"OK": None}),
])
def test_degenerate_data_is_skipped_not_plotted_badly(field, value):
    report = _empty_report()
    report[field] = value
    page = render_html(report)  # warnings are errors here: no log-of-zero complaints either
    assert "no data" in page


def test_summary_lines_mention_rate_p99_audit_and_verdict():
    text = "\n".join(summary_lines(_full_report()))
    assert "accepted 892/s" in text
    assert "p99 12.30" in text
    assert "audit: PASS" in text
    assert "baselines:" in text and "find-max: max accepted 1,990/s" in text
    assert "OK: 5,300" not in text and "OK 5,300" in text
    assert summary_lines(_full_report())[-1] == "result: OK"

    failed = _full_report()
    failed["audit"]["ok"] = False
    failed["ok"] = False
    lines = summary_lines(failed)
    assert "audit: FAIL" in "\n".join(lines)
    assert lines[-1] == "result: FAILED"


def test_summary_lines_cope_with_missing_sections():
    report = _empty_report()
    del report["totals"]["latency_ms"]
    lines = summary_lines(report)
    text = "\n".join(lines)
    assert "audit: not run" in text
    assert "baselines" not in text and "find-max" not in text
    assert "p99 —" in text
    assert lines[-1] == "result: FAILED"


def test_summary_lines_show_the_runs_warnings_before_the_result():
    report = _full_report()
    report["warnings"] = ["16,200,000 taps planned over 100,000 home cards is 162 a card"]
    lines = summary_lines(report)
    assert lines[-2] == "warning: 16,200,000 taps planned over 100,000 home cards is 162 a card"
    assert lines[-1] == "result: OK"
