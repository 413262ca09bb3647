"""The issuer's check of its cards' offline records cleared elsewhere (domain/offline_verdicts.py):
every record whose TAC its card made passes, any other TAC is rejected with the reason, online
records are not checked."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.cards import make_card_no
from citycard.domain.clearing_records import ClearingRecord, record_id_of
from citycard.domain.epurse_crypto import When
from citycard.domain.offline import IssuerKeys, OfflineRecord, expected_tac
from citycard.domain.offline_verdicts import FORGED_TAC, check_offline

KEYS = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                         "F0E0D0C0B0A090807060504030201000")
OTHER = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                          "0F1E2D3C4B5A69788796A5B4C3D2E1F0")  # the MTK differs
W = "2026-12-07"


def _offline(serial: int, seq: int, amount_fen: int, counter: int, keys: IssuerKeys) -> ClearingRecord:
    card = make_card_no(serial, 310000)
    r = OfflineRecord(card, counter, amount_fen, 100, 0x06, 4242, seq, When.of("20261207", "081500"), bytes(4))
    tac = expected_tac(keys.dtk(card), r)
    return ClearingRecord(record_id_of("HZ", 4242, seq), "SH", "HZ", card, amount_fen, "offline", W, 4242, seq,
                          "20261207081500", counter, 100, 0x06, tac)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(1, 50_000), st.integers(0, 65535), st.booleans()),
                min_size=0, max_size=8, unique_by=lambda t: t[0]))
def test_exactly_the_records_its_cards_did_not_make_are_rejected(sales: list[tuple[int, int, int, bool]]) -> None:
    records = [_offline(serial, i + 1, amount, counter, OTHER if forged else KEYS)
               for i, (serial, amount, counter, forged) in enumerate(sales)]
    online = ClearingRecord(record_id_of("HZ", 7, 1), "SH", "HZ", make_card_no(1, 310000), 5, "online", W, 7, 1,
                            "20261207081500")
    got = check_offline([*records, online], KEYS)
    assert (got.offline, got.online) == (len(records), 1)
    assert got.bad == [(r.record_id, FORGED_TAC) for r, s in zip(records, sales, strict=True) if s[3]]


def test_a_changed_amount_breaks_the_tac() -> None:
    r = _offline(1, 1, 300, 5, KEYS)
    assert check_offline([r], KEYS).bad == []
    assert check_offline([replace(r, amount_fen=30)], KEYS).bad == [(r.record_id, FORGED_TAC)]
