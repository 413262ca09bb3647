"""Card numbers: issuer prefix, 10-digit serial, Luhn check digit."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.cards import (
    HANGZHOU_ISSUER,
    CardState,
    CardStatus,
    Category,
    card_no_valid,
    issuer_of,
    luhn_digit,
    make_card_no,
)
from citycard.domain.taps import MAX_CARD_NO

_SERIALS = st.integers(0, 10**10 - 1)


@pytest.mark.parametrize(
    ("number", "digit"),
    [(7992739871, 3), (0, 0), (1, 8), (453201511283036, 6), (37828224631000, 5)],
)
def test_luhn_digit_known_values(number: int, digit: int) -> None:
    assert luhn_digit(number) == digit


def test_make_card_no_layout() -> None:
    card_no = make_card_no(1)
    assert card_no == 33010000000000017
    assert len(str(card_no)) == 17
    assert issuer_of(card_no) == HANGZHOU_ISSUER
    assert card_no <= MAX_CARD_NO


@pytest.mark.parametrize("serial", [-1, 10**10])
def test_make_card_no_rejects_serials_out_of_range(serial: int) -> None:
    with pytest.raises(ValueError):
        make_card_no(serial)


@settings(max_examples=200)
@given(serial=_SERIALS, issuer=st.integers(100000, 999999))
def test_made_card_numbers_are_valid(serial: int, issuer: int) -> None:
    card_no = make_card_no(serial, issuer)
    assert card_no_valid(card_no)
    assert issuer_of(card_no) == issuer
    assert (card_no // 10) % 10**10 == serial
    assert 0 < card_no <= MAX_CARD_NO


@settings(max_examples=200)
@given(serial=_SERIALS, position=st.integers(0, 16), delta=st.integers(1, 9))
def test_any_single_digit_error_is_detected(serial: int, position: int, delta: int) -> None:
    digits = list(str(make_card_no(serial)))
    digits[position] = str((int(digits[position]) + delta) % 10)
    assert not card_no_valid(int("".join(digits)))


@settings(max_examples=200)
@given(serial=_SERIALS, position=st.integers(0, 15))
def test_adjacent_transpositions_are_detected(serial: int, position: int) -> None:
    digits = list(str(make_card_no(serial)))
    a, b = digits[position], digits[position + 1]
    if a == b or {a, b} == {"0", "9"}:  # Luhn's one blind spot: 09 <-> 90
        return
    digits[position], digits[position + 1] = b, a
    assert not card_no_valid(int("".join(digits)))


@pytest.mark.parametrize("card_no", [0, 1, 9, -18])
def test_too_short_numbers_are_not_valid(card_no: int) -> None:
    assert not card_no_valid(card_no)


def test_card_state_repr() -> None:
    card = CardState(33010000000000017, CardStatus.ACTIVE, Category.STUDENT, 182)
    assert repr(card) == (
        "CardState(card_no=33010000000000017, status=0, category=1, purses=[182, 0, 0, 0, 0, 0])"
    )
