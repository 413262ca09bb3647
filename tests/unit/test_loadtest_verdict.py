"""A load-lab run that (nearly) only got refusals, or whose target went away, fails with one
line saying why (citycard/loadtest/verdict.py)."""

from citycard.loadtest.verdict import why_failed

PASSING = {"ok": True, "run": {"target": "own platform"}, "errors": [], "audit": {"ok": True},
           "totals": {"answered": 1000, "scheduled": 1000},
           "codes": {"OK": 900, "APP_NOT_ENABLED": 50, "INSUFFICIENT_FUNDS": 30, "PASSBACK": 20}}


def test_a_normal_mix_of_refusals_passes() -> None:
    assert why_failed(PASSING) is None


def test_nearly_all_card_unknown_fails_naming_the_codes_and_the_likely_cause() -> None:
    report = {**PASSING, "ok": False, "codes": {"CARD_UNKNOWN": 960, "BUSY": 10, "OK": 30}}
    line = why_failed(report)
    assert line is not None and "\n" not in line
    assert line.startswith("97.0% of 1,000 answered taps were refused (CARD_UNKNOWN 960, BUSY 10)"), line
    assert "seeded after it started" in line


def test_just_under_the_bound_still_passes() -> None:
    assert why_failed({**PASSING, "codes": {"BUSY": 949, "OK": 51}}) is None


def test_a_target_that_went_away_names_it_and_the_answered_count() -> None:
    report = {**PASSING, "ok": False, "totals": {"answered": 611, "scheduled": 3045},
              "run": {"target": "127.0.0.1:7700"},
              "errors": ["terminal 7: ConnectionError(\"connection lost: ConnectionError('server closed the connection')\")"]}
    line = why_failed(report)
    assert line is not None and line.startswith(
        "the target 127.0.0.1:7700 closed or refused connections: 611 of 3,045 taps answered, 1 connection errors"), line
