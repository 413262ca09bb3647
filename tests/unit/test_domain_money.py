"""Money: integer fen, one rounding rule (half up) for every percentage fare."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.money import FEN_PER_YUAN, format_yuan, percent_of_fen


@pytest.mark.parametrize(
    ("amount_fen", "percent", "expected_fen"),
    [
        (200, 91, 182),  # the bus card fare on the default base
        (150, 91, 137),  # 136.5 rounds half up
        (0, 91, 0),
        (200, 0, 0),
        (200, 100, 200),
        (200, 50, 100),
        (1, 50, 1),  # 0.5 rounds up
        (1, 49, 0),  # 0.49 rounds down
        (3, 50, 2),  # 1.5 rounds up
        (101, 50, 51),  # 50.5 rounds up
        (149, 91, 136),  # 135.59 rounds up to the nearest fen
        (110, 91, 100),  # 100.1 rounds down
        (250, 150, 375),  # more than 100 % is allowed
    ],
)
def test_percent_of_fen_rounds_half_up(amount_fen: int, percent: int, expected_fen: int) -> None:
    assert percent_of_fen(amount_fen, percent) == expected_fen


@pytest.mark.parametrize(("amount_fen", "percent"), [(-1, 91), (200, -1), (-200, -91)])
def test_percent_of_fen_rejects_negative_inputs(amount_fen: int, percent: int) -> None:
    with pytest.raises(ValueError):
        percent_of_fen(amount_fen, percent)


@settings(max_examples=200)
@given(amount_fen=st.integers(0, 10**12), percent=st.integers(0, 1000))
def test_percent_of_fen_matches_exact_half_up(amount_fen: int, percent: int) -> None:
    exact = Fraction(amount_fen * percent, 100)
    got = percent_of_fen(amount_fen, percent)
    assert type(got) is int
    # half up: the smallest integer n with n >= exact - 1/2, i.e. floor(exact + 1/2)
    assert got == (exact + Fraction(1, 2)).__floor__()
    assert abs(got - exact) <= Fraction(1, 2)


@settings(max_examples=200)
@given(a=st.integers(0, 10**9), b=st.integers(0, 10**9), percent=st.integers(0, 200))
def test_percent_of_fen_is_monotonic_in_amount(a: int, b: int, percent: int) -> None:
    lo, hi = sorted((a, b))
    assert percent_of_fen(lo, percent) <= percent_of_fen(hi, percent)


@pytest.mark.parametrize(
    ("amount_fen", "text"),
    [
        (0, "0.00"),
        (5, "0.05"),
        (100, "1.00"),
        (182, "1.82"),
        (123_456, "1234.56"),
        (-5, "-0.05"),
        (-182, "-1.82"),
    ],
)
def test_format_yuan(amount_fen: int, text: str) -> None:
    assert format_yuan(amount_fen) == text


def test_fen_per_yuan() -> None:
    assert FEN_PER_YUAN == 100
