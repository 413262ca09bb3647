"""The region's pure-ish pieces around the link: the issuer's reserved terminal-id space for
remote taps, the acquirer's pricing of a visitor's ride, and the ``[region]`` settings."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.config.fare_table import load_fare_tables
from citycard.config.settings import FARES_DIR, load_settings
from citycard.domain.money import percent_of_fen
from citycard.domain.taps import MAX_TERMINAL_ID, Tap, TapKind
from citycard.errors import ConfigError
from citycard.interop.store import MAX_REMOTE_TERMINAL_ID, REMOTE_TERMINAL_BASE, remote_terminal_id
from citycard.interop.wiring import fare_pricer, load_link_key

SLOTS = st.integers(min_value=0, max_value=1023)
TERMINALS = st.integers(min_value=1, max_value=MAX_REMOTE_TERMINAL_ID)


@settings(max_examples=200)
@given(SLOTS, TERMINALS, SLOTS, TERMINALS)
def test_remote_terminal_ids_are_distinct_and_outside_local_ids(s1: int, t1: int, s2: int, t2: int) -> None:
    a, b = remote_terminal_id(s1, t1), remote_terminal_id(s2, t2)
    assert REMOTE_TERMINAL_BASE < a <= MAX_TERMINAL_ID
    assert (a == b) == ((s1, t1) == (s2, t2))


@pytest.mark.parametrize(("slot", "terminal_id"), [(-1, 1), (1024, 1), (0, 0), (0, MAX_REMOTE_TERMINAL_ID + 1)])
def test_remote_terminal_id_refuses_what_does_not_fit(slot: int, terminal_id: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        remote_terminal_id(slot, terminal_id)


def test_pricer_charges_the_adult_route_fare_at_the_issuers_rate() -> None:
    fares = load_fare_tables(FARES_DIR / "hangzhou.toml")
    price = fare_pricer(fares)
    t = 1_760_000_000_000
    ver = fares.at(t)
    assert ver is not None
    ride = Tap(1001, 1, 31000000000000179, t, int(TapKind.BUS), 7)
    full = price(ride, 310000)  # Shanghai: 100 % in the table
    assert full > 0
    assert price(ride, 330200) == percent_of_fen(full, 95) < full  # Ningbo: 95 %
    assert price(ride, 999999) == full  # not listed: the plain fare
    shop = Tap(1001, 2, 31000000000000179, t, int(TapKind.MERCHANT), 3, 1234)
    assert price(shop, 310000) == 1234  # amounts are the terminal's


def test_region_is_absent_by_default_and_checked_when_present(tmp_path: Path) -> None:
    assert load_settings(env={}).region is None
    key = tmp_path / "k"
    key.write_text("00" * 32)
    issuer = {"code": "HZ", "name": "Hangzhou", "card_prefix": 330100, "link": "127.0.0.1:7800",
              "link_public_key_hex": "11" * 32, "floor_limit_fen": 2000}
    s = load_settings(env={}, overrides={"region": {"own": "HZ", "issuers": [issuer], "link_key_path": str(key)}})
    assert s.region is not None and s.region.link_port == 7800
    with pytest.raises(ConfigError, match=r"region.issuers\[0\].card_prefix"):
        load_settings(env={}, overrides={"region": {"own": "HZ", "issuers": [{**issuer, "card_prefix": 0}],
                                                    "link_key_path": str(key)}})
    with pytest.raises(ConfigError, match="region.own: NB is not among the issuers"):
        load_settings(env={}, overrides={"region": {"own": "NB", "issuers": [issuer], "link_key_path": str(key)}})


def test_link_key_file_must_hold_32_hex_bytes(tmp_path: Path) -> None:
    good, short, missing = tmp_path / "good", tmp_path / "short", tmp_path / "missing"
    good.write_text("01" * 32 + "\n")
    short.write_text("01" * 31)
    assert len(load_link_key(str(good)).public_key().public_bytes_raw()) == 32
    with pytest.raises(ConfigError, match="32 bytes"):
        load_link_key(str(short))
    with pytest.raises(ConfigError, match="cannot read"):
        load_link_key(str(missing))
