"""The lab's warning for runs whose cards run out of money (scenarios.money_warning)."""

import pytest

from citycard.loadtest.lab import Phase
from citycard.loadtest.scenarios import TAPS_PER_CARD_MAX, _round_up, money_warning
from citycard.loadtest.schedule import DayCurve, Spike, Steady


def test_a_soak_that_drains_the_cards_is_warned_with_the_scale_that_fits():
    soak = Phase("soak", Steady(9000.0), 1800.0, 10**8)  # 16.2 M taps
    text = money_warning(soak, home_cards=100_000)
    assert text is not None
    assert "162 a card" in text and "INSUFFICIENT_FUNDS" in text
    assert "a city of scale 0.2 or more" in text  # 1.62 M cards at 10 taps each
    assert money_warning(soak, home_cards=2_000_000) is None


def test_a_megacity_day_is_not_warned():
    day = Phase("day", DayCurve.for_total_taps(20_000_000, 1_200_000.0), 1200.0, 10**8)
    assert money_warning(day, home_cards=10_000_000) is None


@pytest.mark.parametrize("per_card, warned", [(TAPS_PER_CARD_MAX - 1, False), (TAPS_PER_CARD_MAX + 1, True)])
def test_the_limit_is_planned_taps_per_home_card(per_card, warned):
    phase = Phase("steady", Steady(float(per_card)), 1000.0, 10**8)  # per_card * 1,000 taps
    assert (money_warning(phase, home_cards=1_000) is not None) == warned


def test_the_profile_counts_not_the_peak_rate():
    # a spike's average is well under its peak: 4,000/s peak for a sixth, 1,000/s otherwise
    spike = Phase("spike", Spike(1000.0, 4.0, 200_000.0, 100_000.0), 600.0, 10**8)
    assert money_warning(spike, home_cards=92_000) is None  # 900,000 planned: 9.8 a card
    assert money_warning(spike, home_cards=80_000) is not None  # 11.25 a card; the peak rate would make 30


def test_a_run_capped_by_max_taps_counts_only_the_taps_it_may_send():
    capped = Phase("soak", Steady(9000.0), 1800.0, 50_000)  # --max-taps 50,000: 5 a card
    assert money_warning(capped, home_cards=10_000) is None


@pytest.mark.parametrize("x, expected", [(1.0, 1.0), (0.1, 0.1), (0.3, 0.5), (0.6, 1.0), (0.162, 0.2),
                                         (1.01, 2.0), (0.0101, 0.02), (4.9, 5.0), (5.1, 10.0)])
def test_the_scale_named_is_the_next_of_1_2_5_times_a_power_of_ten(x, expected):
    assert _round_up(x) == pytest.approx(expected)
