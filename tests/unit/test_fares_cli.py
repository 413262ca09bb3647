"""``citycard fares check`` and ``citycard fares quote``, run in-process."""

import json
import re
from pathlib import Path

import pytest

from citycard.cli.main import main
from citycard.config.fare_table import shipped_tables
from citycard.config.settings import FARES_DIR
from tests.support.paths import ROOT

SHIPPED = FARES_DIR / "hangzhou.toml"
AT = "2009-03-02T08:15:00+08:00"


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse rejects bad flags by exiting
        return int(exc.code or 0)


def quote(capsys: pytest.CaptureFixture[str], *flags: str) -> dict:
    capsys.readouterr()
    assert run(["fares", "quote", "--table", str(SHIPPED), "--at", AT, *flags]) == 0
    return json.loads(capsys.readouterr().out)


# Product bug in citycard/config/fare_table.py (_line_of): the line reported is the first line
# naming the path's last key, wherever it is; a key that recurs gets the wrong line.


# -- check --------------------------------------------------------------------------------
def test_check_shipped_table_prints_one_ok_line(capsys):
    assert run(["fares", "check", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("OK ")
    assert "Hangzhou" in out and "versions 1 from 2009-01-01T00:00:00+08:00" in out
    assert "bus routes 5" in out and "parks 3" in out and "merchants 3" in out and "concessions 4" in out


def _broken(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    text = SHIPPED.read_text()
    assert text.count(old) == 1
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(old, new))
    line = text[: text.index(old)].count("\n") + 1
    return path, line


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("card_percent = 91 ", "card_percent = 191", "versions[0].bus.card_percent"),
        ("max_amount_fen = 1000000 ", 'max_amount_fen = "lots"', "versions[0].max_amount_fen"),
        ('effective_from = "2009-01-01T00:00:00+08:00"', 'effective_from = "2009-01-01T00:00:00"',
         "versions[0].effective_from"),
        ("anti_passback_s = 30 ", "anti_passback_s = 7200", "versions[0].anti_passback_s"),
        # the same key names elsewhere in the file (the bike's) must not take the line
        ("deposit_fen = 10000 ", "deposit_fen = -1", "versions[0].library.deposit_fen"),
        ("free_minutes = 15\nfirst_hour_fen = 500", "free_minutes = -1\nfirst_hour_fen = 500",
         "versions[0].parking.default.free_minutes"),
    ],
)
def test_check_broken_table_names_key_and_line_and_exits_2(tmp_path, capsys, old, new, key):
    path, line = _broken(tmp_path, old, new)
    assert run(["fares", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: {key}: " in err


def test_check_unknown_category_names_the_concession(tmp_path, capsys):
    path, _ = _broken(tmp_path, 'category = "disabled"', 'category = "veteran"')
    assert run(["fares", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r":\d+: versions\[0\]\.concessions\[2\]\.category: unknown category 'veteran'", err)


def test_check_error_in_a_later_version_points_at_its_line(tmp_path, capsys):
    path = tmp_path / "two.toml"
    text = SHIPPED.read_text() + ('\n[[versions]]\nversion = 2\neffective_from = "2010-01-01T00:00:00+08:00"\n'
                                  "[versions.bus]\ncard_percent = 900\n")
    path.write_text(text)
    assert run(["fares", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{len(text.splitlines())}: versions[1].bus.card_percent" in err


def test_check_missing_file_and_bad_toml_exit_2(tmp_path, capsys):
    assert run(["fares", "check", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('city = "x"\nversions = [')
    assert run(["fares", "check", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


# -- quote --------------------------------------------------------------------------------
def test_quote_bus_without_and_with_monthly_pass(capsys):
    plain = quote(capsys, "--mode", "bus", "--route", "1")
    assert plain == {
        "result": "OK", "fare_fen": 182, "base_fen": 200, "rules": ["bus.card_percent 91%"],
        "purses": {"epurse": -182, "general": 0, "voucher": 0, "allowance": 0, "medical": 0, "deposit": 0},
        "fund_fen": 0, "version": 1,
    }
    with_pass = quote(capsys, "--mode", "bus", "--route", "1", "--product", "monthly_pass")
    assert (with_pass["fare_fen"], with_pass["purses"]["epurse"]) == (100, -100)
    assert with_pass["rules"] == ["monthly_pass 50%"]


def test_quote_issue_example_base_fen_override(capsys):
    d = quote(capsys, "--mode", "bus", "--route", "1", "--base-fen", "200", "--category", "adult",
              "--product", "monthly_pass")
    assert (d["result"], d["fare_fen"]) == ("OK", 100)
    # 91 % of 150 is 136.5: half up to 137
    assert quote(capsys, "--mode", "bus", "--route", "1", "--base-fen", "150")["fare_fen"] == 137


def test_quote_pass_does_not_cover_route_315(capsys):
    d = quote(capsys, "--mode", "bus", "--route", "315", "--product", "monthly_pass")
    assert d["fare_fen"] == 182


def test_quote_elderly_ride_limit(capsys):
    assert quote(capsys, "--mode", "bus", "--route", "1", "--category", "elderly")["fare_fen"] == 0
    fifth = quote(capsys, "--mode", "bus", "--route", "1", "--category", "elderly", "--rides-today", "4")
    assert fifth["fare_fen"] == 182 and "concession[0] limit 4/day reached" in fifth["rules"]


def test_quote_park_with_and_without_pass(capsys):
    assert quote(capsys, "--mode", "park", "--route", "1")["fare_fen"] == 1000
    d = quote(capsys, "--mode", "park", "--route", "1", "--product", "park_pass")
    assert (d["result"], d["fare_fen"], d["base_fen"], d["rules"]) == ("OK", 0, 1000, ["park_pass"])
    assert quote(capsys, "--mode", "park", "--route", "3")["result"] == "PASS_REQUIRED"


def test_quote_medical_split(capsys):
    d = quote(capsys, "--mode", "medical", "--bill-class", "outpatient", "--amount-fen", "10000",
              "--insurance", "employee", "--app", "medical", "--purse", "medical=5000")
    assert (d["result"], d["fare_fen"], d["fund_fen"], d["base_fen"]) == ("OK", 2000, 8000, 10000)
    assert d["purses"]["medical"] == -2000 and d["purses"]["epurse"] == 0


def test_quote_bike_past_free_period(capsys):
    d = quote(capsys, "--mode", "bike_return", "--rented-at", "2009-03-02T05:00:00+08:00")  # 195 min
    assert (d["result"], d["fare_fen"], d["purses"]["epurse"]) == ("OK", 300, -300)
    held = quote(capsys, "--mode", "bike_return", "--no-credit", "--rented-at", "2009-03-02T05:00:00+08:00")
    assert held["purses"]["deposit"] == -20000 and held["purses"]["epurse"] == 19700
    assert quote(capsys, "--mode", "bike_return")["result"] == "NO_OPEN_RENTAL"


def test_quote_parking_and_passback_and_issuer(capsys):
    d = quote(capsys, "--mode", "parking_exit", "--route", "7", "--entered-at", "2009-03-02T06:05:00+08:00")
    assert d["fare_fen"] == 1800  # 130 min at lot 7: 800 + 2 x 500
    assert quote(capsys, "--mode", "bus", "--route", "1", "--tapped-before", "10")["result"] == "PASSBACK"
    assert quote(capsys, "--mode", "bus", "--route", "1", "--issuer", "330200")["fare_fen"] == 190
    assert quote(capsys, "--mode", "bus", "--route", "1", "--issuer", "440300")["result"] == "ISSUER_NOT_ACCEPTED"


def test_quote_uses_the_same_decide_as_the_tap_path(monkeypatch, capsys):
    import citycard.cli.fares as fares_cli
    import citycard.domain.rules as rules

    assert fares_cli.decide is rules.decide
    calls = []
    monkeypatch.setattr(fares_cli, "decide", lambda *a: calls.append(a) or rules.decide(*a))
    quote(capsys, "--mode", "bus", "--route", "1")
    tables, card, tap = calls[-1]
    assert tables.city == shipped_tables().city and tap.route == 1 and card.purses[0] == 100_000


def test_quote_default_table_is_the_configured_citys(capsys, monkeypatch):
    monkeypatch.delenv("CITYCARD_CONFIG", raising=False)
    assert run(["fares", "quote", "--mode", "bus", "--route", "1"]) == 0  # --at: now
    assert json.loads(capsys.readouterr().out)["fare_fen"] == 182


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mode", "tram"], "invalid choice"),
        (["--mode", "bus"], "--mode bus needs --route"),
        (["--mode", "bus", "--route", "x"], "not a whole number"),
        (["--mode", "bus", "--route", "1", "--at", "yesterday"], "not an ISO 8601 time"),
        (["--mode", "taxi"], "needs --amount-fen"),
        (["--mode", "medical", "--amount-fen", "100"], "needs --bill-class"),
        (["--mode", "bus", "--route", "1", "--purse", "cash=1"], "--purse 'cash=1'"),
        (["--mode", "bus", "--route", "1", "--purse", "epurse=-5"], "between 0"),
        (["--mode", "park", "--route", "1", "--base-fen", "100"], "--base-fen applies"),
        (["--mode", "medical", "--amount-fen", "100", "--bill-class", "inpatient", "--insurance", "army"],
         "the table knows employee"),
        (["--mode", "bike_return", "--rented-at", "2009-03-02T09:00:00+08:00"], "must not be after --at"),
        (["--mode", "bike_return", "--no-credit", "--purse", "epurse=0", "--rented-at", "2009-03-02T07:00:00+08:00"],
         "refused: INSUFFICIENT_FUNDS"),
    ],
)
def test_quote_bad_flags_exit_2_with_a_clear_message(capsys, flags, message):
    assert run(["fares", "quote", "--table", str(SHIPPED), "--at", AT, *flags]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_quote_bad_table_exits_2(tmp_path, capsys):
    path, line = _broken(tmp_path, "card_percent = 91 ", "card_percent = 191")
    assert run(["fares", "quote", "--table", str(path), "--mode", "bus", "--route", "1"]) == 2
    assert f"{path}:{line}: versions[0].bus.card_percent" in capsys.readouterr().err


V2 = '\n[[versions]]\nversion = 2\neffective_from = "2010-01-01T00:00:00+08:00"\n\n[versions.bus]\ncard_percent = 90\n'


def test_quote_prices_by_the_version_in_force_at_the_tap(tmp_path, capsys):
    table = tmp_path / "two.toml"
    table.write_text(SHIPPED.read_text() + V2)
    for at, fare, version in (("2009-12-31T23:59:59+08:00", 182, 1), ("2010-01-01T00:00:00+08:00", 180, 2),
                              ("2008-12-31T23:59:59+08:00", 0, 0)):
        assert run(["fares", "quote", "--table", str(table), "--at", at, "--mode", "bus", "--route", "1"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert (d["fare_fen"], d["version"]) == (fare, version)
    assert d["result"] == "NO_FARE_TABLE"


def _doc_examples() -> list[tuple[str, str]]:
    doc = (ROOT / "docs" / "fares.md").read_text()
    pairs = []
    for block in re.findall(r"```console\n(.*?)```", doc, flags=re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ citycard fares quote "):
                pairs.append((line[2:], lines[i + 1]))
    return pairs


DOC_EXAMPLES = _doc_examples()


def test_docs_have_examples():
    assert len(DOC_EXAMPLES) >= 40


@pytest.mark.parametrize(("command", "expected"), DOC_EXAMPLES, ids=[c for c, _ in DOC_EXAMPLES])
def test_docs_example_output_is_real(tmp_path, capsys, command, expected):
    import shlex

    argv = shlex.split(command)[1:]
    if "/tmp/hangzhou-2010.toml" in argv:
        table = tmp_path / "hangzhou-2010.toml"
        table.write_text(SHIPPED.read_text() + V2)
        argv[argv.index("/tmp/hangzhou-2010.toml")] = str(table)
    else:
        argv += ["--table", str(SHIPPED)]
    assert run(argv) == 0
    assert capsys.readouterr().out.rstrip("\n") == expected
