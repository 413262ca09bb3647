"""Fare tables: the shipped table parses; bad tables fail with a FareTableError naming the key."""

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

import citycard.config.fare_table as fare_table_module
from citycard.config.fare_table import shipped_tables
from citycard.domain.tables import FareTableError, FareTables, iso_to_ms, parse_tables

SHIPPED = Path(fare_table_module.__file__).parent / "fares" / "hangzhou.toml"
V1 = {"version": 1, "effective_from": "2009-01-01T00:00:00+08:00"}


def _raw(*versions: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"city": "Testville", "home_issuer": 330100, "versions": list(versions) or [dict(V1)], **top}


def _shipped_raw() -> dict[str, Any]:
    return tomllib.loads(SHIPPED.read_text())


def _error(raw: dict[str, Any]) -> FareTableError:
    with pytest.raises(FareTableError) as info:
        parse_tables(raw)
    return info.value


# -- the shipped table ------------------------------------------------------------------------
def test_shipped_table_parses_with_the_seed_numbers() -> None:
    tables = shipped_tables()
    assert isinstance(tables, FareTables)
    assert tables.city == "Hangzhou"
    assert tables.home_issuer == 330100
    v = tables.at(iso_to_ms("2009-06-01T00:00:00+08:00"))
    assert v is not None and v.version == 1
    assert v.v.bus.card_percent == 91
    mp = v.v.bus.monthly_pass
    assert (mp.percent, mp.route_from, mp.route_to, mp.except_routes) == (50, 1, 499, [315])
    assert v.bus_base == {1: 200, 315: 200, 499: 300, 500: 400, 800: 500}
    assert v.v.bike.free_minutes == 60 and v.v.bike.per_hour_fen == 100
    assert v.v.medical.fund_percent["employee"]["outpatient"] == 80
    assert v.issuers[330200].percent == 95
    assert set(v.parks) == {1, 2, 3} and v.parks[3].pass_only
    assert v.merchants[9001].member_discount_percent == 5


def test_shipped_raw_parses_the_same_via_parse_tables() -> None:
    tables = parse_tables(_shipped_raw())
    assert [c.version for c in tables.versions] == [c.version for c in shipped_tables().versions]


def test_minimal_table_takes_every_default() -> None:
    tables = parse_tables(_raw())
    v = tables.versions[0]
    assert v.v.bus.card_percent == 91 and v.v.bus.default_base_fen == 200
    assert v.utc_offset_ms == 8 * 3_600_000


# -- versions -----------------------------------------------------------------------------------
def test_later_version_merges_over_the_earlier() -> None:
    raw = _shipped_raw()
    raw["versions"].append({"version": 2, "effective_from": "2025-01-01T00:00:00+08:00",
                            "bus": {"card_percent": 90}})
    tables = parse_tables(raw)
    switch = iso_to_ms("2025-01-01T00:00:00+08:00")
    old, new = tables.at(switch - 1), tables.at(switch)
    assert old is not None and new is not None
    assert (old.version, old.v.bus.card_percent) == (1, 91)
    assert (new.version, new.v.bus.card_percent) == (2, 90)
    # everything not restated is inherited, including nested keys of the merged section
    assert new.bus_base == old.bus_base
    assert new.v.bus.monthly_pass == old.v.bus.monthly_pass
    assert new.v.concessions == old.v.concessions
    assert new.parks.keys() == old.parks.keys()
    assert tables.current_version == 2


def test_at_is_none_before_the_first_version() -> None:
    tables = shipped_tables()
    start = iso_to_ms("2009-01-01T00:00:00+08:00")
    assert tables.at(start - 1) is None
    first = tables.at(start)
    assert first is not None and first.version == 1


# -- bad tables: the error's path names the key -------------------------------------------------
@pytest.mark.parametrize(
    ("version", "path"),
    [
        ({"bus": {"card_percent": "91"}}, "versions[0].bus.card_percent"),  # wrong type
        ({"bus": {"card_percent": 101}}, "versions[0].bus.card_percent"),  # percent 101
        ({"bus": {"monthly_pass": {"percent": -1}}}, "versions[0].bus.monthly_pass.percent"),
        ({"anti_passback_s": 3601}, "versions[0].anti_passback_s"),
        ({"bike": {"free_minutes": "sixty"}}, "versions[0].bike.free_minutes"),
        ({"concessions": [{"category": "pensioner"}]}, "versions[0].concessions[0].category"),
        ({"concessions": [{"category": "elderly", "mode": "bus"}, {"category": "student", "mode": "tram"}]},
         "versions[0].concessions[1].mode"),
        ({"anti_passback_modes": ["bus", "ferry"]}, "versions[0].anti_passback_modes"),
        ({"bus": {"route_base_fen": {"a1": 200}}}, "versions[0].bus.route_base_fen"),  # non-numeric route
        ({"bus": {"route_base_fen": {"0": 200}}}, "versions[0].bus.route_base_fen"),
        ({"water_bus": {"route_fen": {"x": 300}}}, "versions[0].water_bus.route_fen"),
        ({"parks": {"west": {"ticket_fen": 100}}}, "versions[0].parks"),
        ({"interop": {"issuers": {"shanghai": {"percent": 100}}}}, "versions[0].interop.issuers"),
        ({"effective_from": "2009-01-01T00:00:00"}, "versions[0].effective_from"),  # no offset
        ({"effective_from": "new year"}, "versions[0].effective_from"),
        ({"bus": {"monthly_pass": {"route_from": 500, "route_to": 1}}}, "versions[0].bus.monthly_pass"),
    ],
)
def test_bad_value_names_its_key(version: dict[str, Any], path: str) -> None:
    err = _error(_raw({**V1, **version}))
    assert err.path == path
    assert str(err).startswith(path + ":")


def test_non_numeric_route_key_is_named_in_the_message() -> None:
    err = _error(_raw({**V1, "bus": {"route_base_fen": {"1": 200, "B1": 300}}}))
    assert err.path == "versions[0].bus.route_base_fen"
    assert "'B1'" in str(err)


def test_error_in_a_later_version_names_that_version() -> None:
    v2 = {"version": 2, "effective_from": "2010-01-01T00:00:00+08:00", "bus": {"card_percent": 101}}
    assert _error(_raw(dict(V1), v2)).path == "versions[1].bus.card_percent"


def test_unknown_mode_in_a_later_version() -> None:
    v2 = {"version": 2, "effective_from": "2010-01-01T00:00:00+08:00",
          "concessions": [{"category": "elderly", "mode": "tram"}]}
    assert _error(_raw(dict(V1), v2)).path == "versions[1].concessions[0].mode"


def test_versions_out_of_time_order() -> None:
    v2 = {"version": 2, "effective_from": "2008-01-01T00:00:00+08:00"}
    err = _error(_raw(dict(V1), v2))
    assert err.path == "versions"
    assert "order" in str(err)


def test_two_versions_at_the_same_instant_are_refused() -> None:
    # same instant written with two offsets
    v2 = {"version": 2, "effective_from": "2008-12-31T16:00:00+00:00"}
    assert _error(_raw(dict(V1), v2)).path == "versions"


def test_duplicate_version_numbers() -> None:
    v2 = {"version": 1, "effective_from": "2010-01-01T00:00:00+08:00"}
    err = _error(_raw(dict(V1), v2))
    assert err.path == "versions[1].version"
    assert "twice" in str(err)


def test_version_number_inherited_by_merge_counts_as_duplicate() -> None:
    err = _error(_raw(dict(V1), {"effective_from": "2010-01-01T00:00:00+08:00"}))
    assert err.path == "versions[1].version"


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"city": "X", "home_issuer": "330100", "versions": [V1]}, "home_issuer"),
        ({"city": "X", "home_issuer": 330100, "versions": []}, "versions"),
        ({"city": "X", "home_issuer": 330100, "versions": [{"version": 0, **{"effective_from": V1["effective_from"]}}]},
         "versions[0].version"),
    ],
)
def test_bad_top_level(raw: dict[str, Any], path: str) -> None:
    assert _error(copy.deepcopy(raw)).path == path


def test_missing_key_is_named_in_the_message() -> None:
    assert "city" in str(_error({"home_issuer": 330100, "versions": [V1]}))


def test_unknown_top_level_key_is_named() -> None:
    """BUG (tables.py parse_tables/_split): for an unknown key msgspec reports the path of the
    enclosing object, so the error's path is '' (the key only appears in the message)."""
    err = _error(_raw(colour="blue"))
    assert "colour" in str(err)
    assert err.path == "colour"


def test_unknown_nested_key_is_named() -> None:
    """BUG (same cause): a misspelt key inside a section reports the section, not the key."""
    err = _error(_raw({**V1, "bus": {"card_pecent": 91}}))
    assert "card_pecent" in str(err)
    assert err.path == "versions[0].bus.card_pecent"


def test_bad_value_under_a_numbered_key_names_that_key() -> None:
    """BUG (tables.py _split): msgspec writes dict keys as '[...]', so the path of a bad value
    inside parks/lots/issuers/fund_percent does not say which park, lot or issuer."""
    err = _error(_raw({**V1, "parks": {"1": {"ticket_fen": 100}, "2": {"ticket_fen": -1}}}))
    assert err.path.startswith("versions[0].parks")
    assert err.path.endswith("ticket_fen")
    assert "[...]" not in err.path and "2" in err.path


def test_shipped_table_with_one_bad_value_fails_naming_it() -> None:
    raw = _shipped_raw()
    raw["versions"][0]["bus"]["card_percent"] = 101
    assert _error(raw).path == "versions[0].bus.card_percent"
    raw = _shipped_raw()
    raw["versions"][0]["concessions"][2]["category"] = "veteran"
    assert _error(raw).path == "versions[0].concessions[2].category"


def test_a_fare_table_error_is_not_raised_for_a_good_second_version() -> None:
    v2 = {"version": 2, "effective_from": "2010-01-01T00:00:00+08:00", "concessions": []}
    tables = parse_tables(_raw(dict(V1), v2))
    assert [c.version for c in tables.versions] == [1, 2]
