"""The host's pure decisions on offline records: duplicates, reused counters, forged TACs, gaps,
impossible balances; and the fast TAC check against epurse_crypto's."""

from dataclasses import replace

import pytest

from citycard.domain.epurse_crypto import When
from citycard.domain.offline import IssuerKeys, OfflineRecord, expected_tac, tac_ok
from citycard.domain.offline_book import WINDOW, CardShadow, OfflineCode, TacKeys, decide

KEYS = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                         "F0E0D0C0B0A090807060504030201000")
CARD = 33_010_000_000_000_173
WHEN = When.of("20261206", "081500")


def rec(counter: int, amount_fen: int = 100, balance_after_fen: int = 0, card: int = CARD, seq: int = 0,
        when: When = WHEN) -> OfflineRecord:
    r = OfflineRecord(card, counter, amount_fen, balance_after_fen, 0x06, 1001, seq or 100 + counter, when,
                      bytes(4), 1, 42)
    return replace(r, tac=expected_tac(KEYS.dtk(card), r))


def loaded(fen: int) -> CardShadow:
    s = CardShadow(CARD)
    s.load(fen)
    return s


def test_in_order_records_are_accepted_and_counted() -> None:
    s = loaded(1000)
    for c, bal in ((0, 900), (1, 800), (2, 700)):
        assert decide(s, rec(c, balance_after_fen=bal), None, True).code is OfflineCode.ACCEPTED
    assert (s.last_counter, s.spent_fen, s.balance_fen, s.missing) == (2, 300, 700, 0)


def test_the_same_record_again_is_a_duplicate_and_changes_nothing() -> None:
    s = loaded(1000)
    r = rec(0, balance_after_fen=900)
    assert decide(s, r, None, True).code is OfflineCode.ACCEPTED
    before = replace(s)
    d = decide(s, r, r, True)
    assert d.code is OfflineCode.DUPLICATE and not d.journaled and s == before


def test_other_content_under_a_journaled_counter_is_reused_and_hotlists() -> None:
    s = loaded(1000)
    first = rec(0, balance_after_fen=900)
    decide(s, first, None, True)
    d = decide(s, rec(0, amount_fen=50, balance_after_fen=950, seq=7), first, True)
    assert d.code is OfflineCode.COUNTER_REUSED and d.hotlists and "counter 0" in d.reason
    assert s.spent_fen == 100  # not counted


def test_a_forged_tac_is_refused_and_hotlists_even_on_a_journaled_counter() -> None:
    s = loaded(1000)
    forged = replace(rec(0, balance_after_fen=900), tac=b"\x00\x00\x00\x00")
    d = decide(s, forged, None, False)
    assert d.code is OfflineCode.BAD_TAC and d.hotlists and not d.journaled and "forged TAC" in d.reason
    assert s.spent_fen == 0
    good = rec(1, balance_after_fen=900)
    decide(s, good, None, True)
    assert decide(s, replace(good, amount_fen=1), good, False).code is OfflineCode.BAD_TAC


def test_gaps_are_reported_not_refused_and_later_filled() -> None:
    s = loaded(1000)
    assert decide(s, rec(0, balance_after_fen=900), None, True).gap is None
    d = decide(s, rec(4, balance_after_fen=800), None, True)  # 1..3 not uploaded yet
    assert (d.code, d.gap, s.missing) == (OfflineCode.ACCEPTED, (1, 3), 3)
    late = decide(s, rec(2, balance_after_fen=600), None, True)
    assert late.code is OfflineCode.ACCEPTED and late.filled_gap and late.gap is None
    assert s.missing == 2 and s.last_counter == 4 and s.seen & (1 << 2)
    first = decide(CardShadow(CARD, loaded_fen=500), rec(3, balance_after_fen=400), None, True)
    assert first.gap == (0, 2)


def test_a_purse_that_would_go_negative_is_impossible_but_journaled() -> None:
    s = loaded(150)
    assert decide(s, rec(0, balance_after_fen=50), None, True).code is OfflineCode.ACCEPTED
    d = decide(s, rec(1, balance_after_fen=0), None, True)
    assert d.code is OfflineCode.BALANCE_IMPOSSIBLE and d.journaled and d.hotlists
    assert "exceed loads by 50" in d.reason and s.spent_fen == 200


def test_a_card_claiming_more_than_was_loaded_is_impossible() -> None:
    s = loaded(1000)
    d = decide(s, rec(0, balance_after_fen=950), None, True)  # at most 900 left
    assert d.code is OfflineCode.BALANCE_IMPOSSIBLE and "reports 950" in d.reason
    # Below the newest counter no bound holds: later purchases are already in the sum.
    s2 = loaded(1000)
    decide(s2, rec(5, balance_after_fen=400), None, True)  # 0..4 spent 500 we have not seen
    assert decide(s2, rec(1, balance_after_fen=800), None, True).code is OfflineCode.ACCEPTED


def test_unknown_cards_and_impossible_types() -> None:
    assert decide(None, rec(0), None, True).code is OfflineCode.CARD_UNKNOWN
    s = loaded(100)
    assert decide(s, replace(rec(0), transaction_type=0x02), None, True).code is OfflineCode.BAD_RECORD
    assert s.spent_fen == 0


def test_the_window_is_bounded() -> None:
    s = loaded(10**9)
    decide(s, rec(0, balance_after_fen=10**9 - 100), None, True)
    decide(s, rec(WINDOW * 3, balance_after_fen=0), None, True)
    assert s.seen.bit_length() <= WINDOW and s.missing == WINDOW * 3 - 1


@pytest.mark.parametrize("card", [CARD, 1, 10**18 - 1])
def test_fast_tac_equals_the_reference_and_refuses_any_change(card: int) -> None:
    keys = TacKeys(KEYS, max_cards=2)
    for c in range(5):  # the encryptor keeps running between records: the chain must restart each time
        r = rec(c, card=card, amount_fen=37 * c + 1)
        assert keys.tac_ok(r) and tac_ok(KEYS.dtk(card), r)
        assert not keys.tac_ok(replace(r, amount_fen=r.amount_fen + 1))
        assert not keys.tac_ok(replace(r, terminal_seq=r.terminal_seq + 1))
        assert not keys.tac_ok(replace(r, tac=bytes(4)))


def test_the_tac_key_cache_is_a_bounded_lru() -> None:
    keys = TacKeys(KEYS, max_cards=2)
    for card in (CARD, CARD + 10, CARD, CARD + 20):
        assert keys.tac_ok(rec(0, card=card))
    assert len(keys) == 2 and list(keys._cards) == [CARD, CARD + 20]
    with pytest.raises(ValueError):
        TacKeys(KEYS, max_cards=0)
