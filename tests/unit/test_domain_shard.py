"""Shard assignment: in range, stable, and an even spread of sequential card numbers."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.cards import make_card_no
from citycard.domain.shard import session_shard_of, shard_of
from citycard.domain.taps import MAX_CARD_NO, MAX_TERMINAL_ID

_N_CARDS = 100_000


@settings(max_examples=200)
@given(card_no=st.integers(1, MAX_CARD_NO), n_shards=st.integers(1, 1024))
def test_shard_of_is_in_range(card_no: int, n_shards: int) -> None:
    shard = shard_of(card_no, n_shards)
    assert isinstance(shard, int)
    assert 0 <= shard < n_shards


@settings(max_examples=200)
@given(terminal_id=st.integers(1, MAX_TERMINAL_ID), n_shards=st.integers(1, 1024))
def test_session_shard_of_is_in_range(terminal_id: int, n_shards: int) -> None:
    assert 0 <= session_shard_of(terminal_id, n_shards) < n_shards


def test_one_shard_owns_everything() -> None:
    assert {shard_of(card_no, 1) for card_no in range(1, 1000)} == {0}


@pytest.mark.parametrize("n_shards", [4, 16])
@pytest.mark.parametrize("first_card_no", [1, 3_100_000_000_000_001, MAX_CARD_NO - _N_CARDS])
def test_sequential_card_numbers_spread_evenly(n_shards: int, first_card_no: int) -> None:
    counts = Counter(shard_of(first_card_no + i, n_shards) for i in range(_N_CARDS))
    mean = _N_CARDS / n_shards
    assert sorted(counts) == list(range(n_shards))  # every shard gets cards
    for shard, count in counts.items():
        assert abs(count - mean) <= 0.05 * mean, (shard, count, mean)


@pytest.mark.parametrize("n_shards", [4, 16])
@pytest.mark.parametrize("stride", [2, 10, 100])
def test_strided_card_numbers_spread_evenly(n_shards: int, stride: int) -> None:
    # card numbers with a trailing check digit or a region prefix step by 10, 100, ...
    counts = Counter(
        shard_of(3_100_000_000_000_000 + i * stride, n_shards) for i in range(_N_CARDS)
    )
    mean = _N_CARDS / n_shards
    assert len(counts) == n_shards
    assert all(abs(count - mean) <= 0.05 * mean for count in counts.values()), counts


@pytest.mark.parametrize("n_shards", [4, 16])
def test_cards_issued_in_serial_order_spread_evenly(n_shards: int) -> None:
    # the city's numbers: issuer prefix, sequential serial, Luhn check digit
    counts = Counter(shard_of(make_card_no(serial), n_shards) for serial in range(_N_CARDS))
    mean = _N_CARDS / n_shards
    assert len(counts) == n_shards
    assert all(abs(count - mean) <= 0.05 * mean for count in counts.values()), counts


# The mapping is recorded at migration time and must never change on a live database: these
# pinned values catch an accidental change of the hash.
@pytest.mark.parametrize(
    ("card_no", "shard_of_4", "shard_of_16"),
    [
        (1, 1, 9),
        (2, 2, 2),
        (3, 0, 12),
        (12_345, 3, 11),
        (3_100_000_000_000_001, 1, 9),
        (MAX_CARD_NO, 3, 15),
    ],
)
def test_shard_of_is_stable(card_no: int, shard_of_4: int, shard_of_16: int) -> None:
    assert shard_of(card_no, 4) == shard_of_4
    assert shard_of(card_no, 16) == shard_of_16
