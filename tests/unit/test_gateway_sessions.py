"""SessionReporter: what reaches the TerminalSession's running totals."""

from citycard.domain.results import Result
from citycard.domain.taps import Outcome, Tap, TapKind
from citycard.gateway.sessions import SessionReporter


def _tap(seq: int) -> Tap:
    return Tap(7, seq, 1234, 0, int(TapKind.BUS), 1, 0)


def test_only_first_decisions_count() -> None:
    """Found by the simulation: BUSY and RETRY answers were counted as taps, and the same tap
    again when it was decided, so totals over-counted the journal."""
    r = SessionReporter([])
    taps = [_tap(s) for s in (1, 2, 3, 4, 5, 6)]
    outcomes = [
        Outcome(int(Result.OK), 200, 800, False),
        Outcome(int(Result.BUSY), 0, -1, False),
        Outcome(int(Result.RETRY), 0, -1, False),
        Outcome(int(Result.OK), 200, 600, True),  # a replay: counted the first time
        Outcome(int(Result.INSUFFICIENT_FUNDS), 0, 600, False),  # decided and journaled: a tap, no fen
        Outcome(int(Result.SEQ_TOO_OLD), 0, -1, False),
    ]
    r.record(taps, outcomes)
    assert r._acc == {7: [1, 5, 2, 200]}  # min seq, max seq, taps, charged fen
