"""The shadows an offline desk keeps: a shadow made from a card's journal is the one decided
record by record (whatever order the records came in), which counters may be journaled
already, and the bounded cache of committed shadows with the rows still to write back."""

import random
from dataclasses import replace

import pytest

from citycard.domain.epurse_crypto import When
from citycard.domain.offline import OfflineRecord
from citycard.domain.offline_book import (
    WINDOW,
    CardShadow,
    OfflineCode,
    ShadowCache,
    accept_new,
    decide,
    shadow_of_journal,
)

CARD = 33_010_000_000_000_173
WHEN = When.of("20261206", "081500")


def rec(counter: int, amount_fen: int = 10) -> OfflineRecord:
    return OfflineRecord(CARD, counter, amount_fen, 0, 0x06, 1001, 100 + counter, WHEN, bytes(4), 1, 42)


def by_decisions(counters: list[int]) -> CardShadow:
    s = CardShadow(CARD, loaded_fen=1_000_000)
    for c in counters:
        assert decide(s, rec(c, 10 + c % 7), None, True).journaled
    return s


def of_journal(counters: list[int]) -> CardShadow:
    last = max(counters, default=-1)
    top = sorted(counters, reverse=True)[:WINDOW]
    return shadow_of_journal(CARD, 1_000_000, sum(10 + c % 7 for c in counters), len(counters), last, top)


@pytest.mark.parametrize("seed", range(20))
def test_a_shadow_from_the_journal_is_the_one_decided_record_by_record(seed: int) -> None:
    rng = random.Random(seed)
    span = rng.choice((5, 40, 700))  # gaps, late records, spans wider than the window
    counters = rng.sample(range(span), rng.randint(1, min(span, 30)))
    assert of_journal(counters) == by_decisions(counters)
    assert of_journal(sorted(counters)) == by_decisions(counters)  # the order they came in does not count


def test_a_card_with_no_journal_has_the_empty_shadow() -> None:
    assert shadow_of_journal(CARD, 500, 0, 0, -1, []) == CardShadow(CARD, loaded_fen=500)


def test_which_counters_may_be_journaled_already() -> None:
    s = by_decisions([0, 1, 3, 300])
    assert not s.may_hold(301)  # above the highest: none can be
    assert s.may_hold(300) and not s.may_hold(299) and not s.may_hold(300 - WINDOW + 1)  # the window's bits
    assert s.may_hold(3) and s.may_hold(2)  # below the window: maybe (look it up)
    assert not CardShadow(CARD).may_hold(0)


def test_a_copy_is_decided_on_without_touching_the_original() -> None:
    s = by_decisions([0])
    c = s.copy()
    assert c == s and c is not s
    decide(c, rec(1), None, True)
    assert (s.last_counter, s.spent_fen) == (0, 10) and (c.last_counter, c.spent_fen) == (1, 20)


def test_the_cache_is_bounded_and_keeps_evicted_dirty_shadows_until_written() -> None:
    cache = ShadowCache(max_cards=2)
    a, b, c = (CardShadow(n) for n in (1, 2, 3))
    cache.install([a, b])
    assert cache.get(1) is a  # now the most recent
    cache.install([c])
    assert len(cache) == 2 and cache.get(2) is None and cache.get(1) is a and cache.get(3) is c
    assert cache.dirty == 3  # card 2's row is still to write, evicted or not
    back = cache.take_dirty()
    assert [s.card_no for s in back] == [1, 2, 3] and cache.dirty == 0
    newer = replace(a, spent_fen=5)
    cache.install([newer])
    cache.untake(back)  # the write failed: written next time, the newer shadow of card 1 kept
    assert {s.card_no: s for s in cache.take_dirty()}[1] is newer
    cache.install([CardShadow(4)], dirty=False)
    assert cache.dirty == 0 and cache.get(4) is not None
    cache.evict([4, 99])
    assert cache.get(4) is None
    with pytest.raises(ValueError, match="max_cards"):
        ShadowCache(0)


def test_an_impossible_record_on_a_stale_shadow_is_what_a_load_would_change() -> None:
    # Why the desk reads a card again before calling it impossible: the same record on the
    # shadow raised by a load made meanwhile is accepted.
    stale, fresh = CardShadow(CARD, loaded_fen=100), CardShadow(CARD, loaded_fen=600)
    assert decide(stale, rec(0, 300), None, True).code is OfflineCode.BALANCE_IMPOSSIBLE
    assert decide(fresh, rec(0, 300), None, True).code is OfflineCode.ACCEPTED


@pytest.mark.parametrize("seed", range(10))
def test_the_fast_acceptance_is_decide_where_it_answers(seed: int) -> None:
    rng = random.Random(seed)
    answered = 0
    for _ in range(300):
        base = CardShadow(CARD, rng.choice((-1, 0, 5, 300)), rng.randint(0, 500), rng.randint(0, 300),
                          rng.getrandbits(WINDOW), rng.randint(0, 3))
        r = replace(rec(max(0, base.last_counter + rng.randint(-2, 300)), rng.randint(0, 200)),
                    balance_after_fen=rng.randint(0, 400), transaction_type=rng.choice((0x06, 0x09, 0x05)))
        fast, slow = base.copy(), base.copy()
        got = accept_new(fast, r.offline_counter, r.amount_fen, r.balance_after_fen, r.transaction_type)
        want = decide(slow, r, None, True)
        if got is None:
            assert fast == base and (want.code is not OfflineCode.ACCEPTED or r.offline_counter <= base.last_counter)
        else:
            answered += 1
            assert (got, fast) == (want, slow)
    assert 10 < answered < 290  # both branches taken
