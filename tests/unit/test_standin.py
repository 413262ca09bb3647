"""The acquirer's stand-in: the floor limit at its boundary, each refusal, risk and advice."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.results import Result
from citycard.domain.standin import Risk, StandIn, StandInCode, TapKey, terminal_result

WINDOW_MS = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % WINDOW_MS  # a window's first ms
CARD, OTHER = 31_000_000_000_000_017, 31_000_000_000_000_025


def key(seq: int, terminal: int = 1001) -> TapKey:
    return TapKey("HZ", terminal, seq)


def standin(**kw: int) -> StandIn:
    return StandIn({"SH": 1000, "NB": 0}, WINDOW_MS, **kw)


def test_exactly_at_the_limit_is_approved_one_fen_over_is_not() -> None:
    s = standin()
    d = s.decide(key(1), CARD, 600, "SH", T0)
    assert (d.code, d.card_total_fen, d.remaining_fen) == (StandInCode.APPROVED, 600, 400)
    over = s.decide(key(2), CARD, 401, "SH", T0 + 1)
    assert (over.code, over.card_total_fen, over.remaining_fen) == (StandInCode.OVER_FLOOR_LIMIT, 600, 400)
    at = s.decide(key(3), CARD, 400, "SH", T0 + 2)
    assert (at.code, at.card_total_fen, at.remaining_fen) == (StandInCode.APPROVED, 1000, 0)
    assert s.decide(key(4), CARD, 1, "SH", T0 + 3).code == StandInCode.OVER_FLOOR_LIMIT
    assert s.decide(key(5), CARD, 0, "SH", T0 + 4).code == StandInCode.APPROVED  # a free ride adds nothing
    assert s.decide(key(6), OTHER, 1000, "SH", T0 + 5).code == StandInCode.APPROVED  # per card
    assert s.decide(key(7), OTHER + 8, 1, "NB", T0).code == StandInCode.OVER_FLOOR_LIMIT  # limit 0: none


def test_a_new_window_starts_the_card_at_zero() -> None:
    s = standin()
    assert s.decide(key(1), CARD, 1000, "SH", T0 + WINDOW_MS - 1).code == StandInCode.APPROVED
    assert s.decide(key(2), CARD, 1, "SH", T0 + WINDOW_MS - 1).code == StandInCode.OVER_FLOOR_LIMIT
    assert s.card_total_fen(CARD, T0 + WINDOW_MS - 1) == 1000
    assert s.card_total_fen(CARD, T0 + WINDOW_MS) == 0
    assert s.decide(key(3), CARD, 1000, "SH", T0 + WINDOW_MS).code == StandInCode.APPROVED
    assert s.risk("SH") == Risk(2, 2000, 2, 2000, 0, 0)


def test_refusals_take_no_risk() -> None:
    s = standin()
    hot = {OTHER}
    assert s.decide(key(1), CARD, 100, "SH", T0, suspended={"SH"}).code == StandInCode.ISSUER_SUSPENDED
    assert s.decide(key(2), OTHER, 100, "SH", T0, hotlisted=hot.__contains__).code == StandInCode.CARD_HOTLISTED
    assert s.decide(key(3), CARD, 100, "BJ", T0).code == StandInCode.UNKNOWN_ISSUER
    assert s.decide(key(4), CARD, -1, "SH", T0).code == StandInCode.BAD_AMOUNT
    assert s.risk("SH") == Risk() and s.pending_advice() == [] and s.card_total_fen(CARD, T0) == 0
    # a suspension elsewhere or another card on the hotlist does not stop this one
    assert s.decide(key(5), CARD, 100, "SH", T0, suspended={"NB"}, hotlisted=hot.__contains__).code == 0


def test_tracking_and_pending_are_bounded() -> None:
    s = standin(max_cards=2, max_pending=3)
    assert s.decide(key(1), CARD, 10, "SH", T0).code == StandInCode.APPROVED
    assert s.decide(key(2), OTHER, 10, "SH", T0).code == StandInCode.APPROVED
    assert s.decide(key(3), OTHER + 8, 10, "SH", T0).code == StandInCode.TRACKING_FULL
    assert s.decide(key(4), CARD, 10, "SH", T0).code == StandInCode.APPROVED  # a tracked card still fits
    assert s.decide(key(5), OTHER, 10, "SH", T0).code == StandInCode.PENDING_FULL
    s.confirm([key(1)])
    assert s.decide(key(5), OTHER, 10, "SH", T0).code == StandInCode.APPROVED
    # a new window frees the card slots, not the pending advice
    assert s.decide(key(6), OTHER + 8, 10, "SH", T0 + WINDOW_MS).code == StandInCode.PENDING_FULL


def test_a_pending_key_again_is_a_replay_counted_once() -> None:
    s = standin()
    first = s.decide(key(1), CARD, 300, "SH", T0)
    again = s.decide(key(1), CARD, 300, "SH", T0 + 5)
    assert first.code == again.code == StandInCode.APPROVED and again.replay and not first.replay
    assert again.card_total_fen == 300 and s.pending_count == 1 and s.risk("SH").approved_fen == 300


def test_forget_undoes_an_approval_that_never_became_durable() -> None:
    s = standin(max_cards=2)
    assert s.decide(key(1), CARD, 300, "SH", T0).code == StandInCode.APPROVED
    assert s.decide(key(2), OTHER, 1000, "SH", T0).code == StandInCode.APPROVED
    assert s.decide(key(3), CARD, 200, "SH", T0).code == StandInCode.APPROVED
    assert s.forget(key(3)) and not s.forget(key(3)) and not s.forget(key(9))
    assert s.card_total_fen(CARD, T0) == 300 and s.risk("SH") == Risk(2, 1300, 2, 1300, 0, 0)
    assert [a.key.seq for a in s.pending_advice()] == [1, 2]
    again = s.decide(key(3), CARD, 200, "SH", T0 + 1)  # the retry is decided anew, not a replay
    assert again.code == StandInCode.APPROVED and not again.replay and again.card_total_fen == 500
    assert s.forget(key(2))  # the card's whole total gone: its limit back, and its tracking slot
    assert s.card_total_fen(OTHER, T0) == 0
    assert s.decide(key(4), OTHER + 8, 10, "SH", T0).code == StandInCode.APPROVED  # the slot it freed
    assert s.decide(key(5), OTHER, 1, "SH", T0).code == StandInCode.TRACKING_FULL
    # an approval from a past window: pending and risk undone, this window's totals untouched
    assert s.decide(key(6), OTHER + 8, 990, "SH", T0 + WINDOW_MS).code == StandInCode.APPROVED
    assert s.forget(key(4)) and s.card_total_fen(OTHER + 8, T0 + WINDOW_MS) == 990
    assert s.risk("SH") == Risk(3, 1490, 3, 1490, 0, 0)


def test_advice_confirmed_and_declined() -> None:
    s = standin()
    for seq, (card, fen, issuer) in enumerate([(CARD, 200, "SH"), (OTHER, 300, "SH"), (CARD, 400, "SH")], 1):
        assert s.decide(key(seq), card, fen, issuer, T0 + seq).code == StandInCode.APPROVED
    advice = s.pending_advice("SH")
    assert [(a.key.seq, a.card_no, a.amount_fen, a.time_ms, a.issuer) for a in advice] == [
        (1, CARD, 200, T0 + 1, "SH"), (2, OTHER, 300, T0 + 2, "SH"), (3, CARD, 400, T0 + 3, "SH")]
    assert [a.key.seq for a in s.pending_advice(limit=2)] == [1, 2] and s.pending_advice("NB") == []
    assert s.confirm([key(1), key(3)]) == 2
    assert s.decline([key(2)]) == 1
    assert s.confirm([key(1)]) == 0 and s.decline([key(9)]) == 0  # twice, or unknown: nothing
    assert s.risk("SH") == Risk(3, 900, 0, 0, 1, 300)
    assert s.pending_advice() == []


def test_bad_construction() -> None:
    for bad in ({"SH": -1}, {"SH": True}):
        with pytest.raises(ValueError, match="floor limit of SH"):
            StandIn(bad, WINDOW_MS)
    with pytest.raises(ValueError, match="window_ms"):
        StandIn({}, 0)
    with pytest.raises(ValueError, match="max_cards"):
        StandIn({}, WINDOW_MS, max_cards=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 700), st.integers(0, 3 * WINDOW_MS)), max_size=40))
def test_no_card_passes_the_limit_in_any_window(taps: list[tuple[int, int, int]]) -> None:
    s = standin()
    approved: dict[tuple[int, int], int] = {}
    total_fen = 0
    for seq, (card, fen, offset) in enumerate(sorted(taps, key=lambda t: t[2]), 1):
        d = s.decide(key(seq), CARD + card, fen, "SH", T0 + offset)
        w = (T0 + offset) // WINDOW_MS
        before = approved.get((card, w), 0)
        assert (d.code == StandInCode.APPROVED) == (before + fen <= 1000)
        if d.code == StandInCode.APPROVED:
            approved[(card, w)] = before + fen
            total_fen += fen
    assert all(v <= 1000 for v in approved.values())
    r = s.risk("SH")
    assert r.approved_fen == r.pending_fen == total_fen == sum(a.amount_fen for a in s.pending_advice())


def test_the_worked_example_of_docs_interop() -> None:
    """docs/interop.md, section 3: Shanghai (floor limit 1500 fen) down 08:10 to 09:20."""
    hour = 3_600_000
    day = T0 - T0 % (24 * hour)
    s = StandIn({"SH": 1500}, hour)
    taps = [(8, 12, 200, StandInCode.APPROVED), (8, 30, 1100, StandInCode.APPROVED),
            (8, 41, 300, StandInCode.OVER_FLOOR_LIMIT), (8, 44, 200, StandInCode.APPROVED),
            (8, 50, 1, StandInCode.OVER_FLOOR_LIMIT), (9, 5, 200, StandInCode.APPROVED)]
    for seq, (h, m, fen, code) in enumerate(taps, 1):
        assert s.decide(key(seq), CARD, fen, "SH", day + h * hour + m * 60_000).code == code, (h, m)
    assert s.risk("SH") == Risk(4, 1700, 4, 1700, 0, 0)
    advice = s.pending_advice("SH")
    assert [a.key.seq for a in advice] == [1, 2, 4, 6]
    assert s.confirm([a.key for a in advice[:3]]) == 3 and s.decline([advice[3].key]) == 1
    assert s.risk("SH") == Risk(4, 1700, 0, 0, 1, 200)
    assert sum(a.amount_fen for a in advice[:3]) == 1500  # what Shanghai owes Hangzhou, gross


def test_every_decision_has_a_terminal_answer() -> None:
    assert {c: terminal_result(c) for c in StandInCode} == {
        StandInCode.APPROVED: Result.OK, StandInCode.OVER_FLOOR_LIMIT: Result.BUSY,
        StandInCode.ISSUER_SUSPENDED: Result.ISSUER_NOT_ACCEPTED, StandInCode.CARD_HOTLISTED: Result.CARD_BLOCKED,
        StandInCode.UNKNOWN_ISSUER: Result.BUSY, StandInCode.TRACKING_FULL: Result.BUSY,
        StandInCode.PENDING_FULL: Result.BUSY, StandInCode.BAD_AMOUNT: Result.BAD_TAP}
