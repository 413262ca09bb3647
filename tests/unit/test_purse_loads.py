"""The pure parts of a counter load: the host's date and time for CREDIT FOR LOAD, and the MACs
the host answers with, checked against the card's own load."""

from datetime import UTC, datetime

from citycard.cards.purse_loads import when_at
from citycard.domain.epurse_crypto import LoadInput, When, load_mac1, load_mac2, load_session_key
from citycard.domain.offline import IssuerKeys, terminal_id_bytes

KEYS = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                         "F0E0D0C0B0A090807060504030201000")


def test_the_host_date_is_the_citys_local_time() -> None:
    ms = int(datetime(2026, 12, 6, 17, 30, 5, tzinfo=UTC).timestamp() * 1000)
    assert when_at(ms) == When.of("20261207", "013005")  # UTC+8: past midnight in the city
    assert when_at(ms + 999) == when_at(ms)


def test_mac1_binds_the_amount_and_terminal_the_card_was_asked_for() -> None:
    dlk = KEYS.for_card(33_010_000_000_000_173).dlk
    random4, counter = bytes.fromhex("01020304"), 7
    seslk = load_session_key(dlk, random4, counter)
    ld = LoadInput(1000, 250, terminal_id_bytes(4001), when_at(0), random4, counter)
    mac1 = load_mac1(seslk, ld)
    assert load_mac1(seslk, LoadInput(1001, 250, ld.terminal_id, ld.when, random4, counter)) != mac1
    assert load_mac1(seslk, LoadInput(1000, 250, terminal_id_bytes(4002), ld.when, random4, counter)) != mac1
    # MAC2 covers the host's date and time: a retry at another second answers another MAC2
    assert load_mac2(seslk, ld) != load_mac2(seslk, LoadInput(1000, 250, ld.terminal_id, when_at(1000), random4,
                                                                counter))
