"""Regional netting (issue 15's start): the multilateral positions sum to exactly 0 fen, the
bilateral ones agree with them, fees round down per obligation, caps name who is over."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.netting import (
    Obligation,
    bilateral,
    interchange_fen,
    multilateral,
    net_of_fees,
    over_cap,
)

CITIES = ["330100", "310000", "320100", "340100", "330200"]
@st.composite
def obligations(draw: st.DrawFn) -> list[Obligation]:
    out = []
    for _ in range(draw(st.integers(min_value=0, max_value=60))):
        a, b = draw(st.permutations(CITIES))[:2]
        out.append(Obligation(a, b, draw(st.integers(min_value=0, max_value=10**12)),
                              draw(st.integers(min_value=1, max_value=10**6))))
    return out


@settings(max_examples=300, deadline=None)
@given(obligations(), st.integers(min_value=0, max_value=10_000))
def test_positions_sum_to_zero_and_agree_with_the_bilateral_ones(obs: list[Obligation], rate_bp: int) -> None:
    net = net_of_fees(obs, rate_bp)
    positions = multilateral(net, CITIES)
    assert sum(positions.values()) == 0
    assert set(positions) == set(CITIES)
    from_pairs = dict.fromkeys(CITIES, 0)
    for (payer, payee), fen in bilateral(net).items():
        assert fen > 0 and payer != payee
        from_pairs[payer] -= fen
        from_pairs[payee] += fen
    assert from_pairs == positions
    # the fees the issuers keep are exactly what the acquirers do not get
    fees = sum(o.amount_fen for o in obs) - sum(o.amount_fen for o in net)
    assert fees == sum(interchange_fen(o.amount_fen, rate_bp) for o in obs) >= 0


def test_a_worked_example_in_fen() -> None:
    # Hangzhou's cards ride 1,000.00 yuan in Shanghai; Shanghai's ride 400.00 in Hangzhou and
    # 99.99 in Nanjing; interchange 0.5 %: rounded down per obligation.
    hz, sh, nj = "330100", "310000", "320100"
    obs = [Obligation(hz, sh, 100_000, 500), Obligation(sh, hz, 40_000, 200), Obligation(sh, nj, 9_999, 3)]
    net = net_of_fees(obs, 50)
    assert [o.amount_fen for o in net] == [99_500, 39_800, 9_950]  # 9,999 * 0.005 = 49.995 -> 49
    assert bilateral(net) == {(hz, sh): 59_700, (sh, nj): 9_950}
    assert multilateral(net) == {hz: -59_700, sh: 49_750, nj: 9_950}
    assert over_cap(multilateral(net), {hz: 50_000, sh: 0, nj: 0}) == {hz}


def test_bad_obligations_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="cannot owe itself"):
        Obligation("330100", "330100", 1)
    with pytest.raises(ValueError, match="amount_fen"):
        Obligation("330100", "310000", -1)
    with pytest.raises(ValueError, match="amount_fen"):
        Obligation("330100", "310000", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        Obligation("330100", "310000", 1, 0)
    with pytest.raises(ValueError, match="basis points"):
        interchange_fen(100, 10_001)
