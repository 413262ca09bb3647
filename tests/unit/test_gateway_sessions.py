"""SessionReporter: what reaches the TerminalSession's running totals."""

from citycard.domain.results import Result
from citycard.domain.taps import Tap, TapKind
from citycard.gateway.sessions import SessionReporter


def _tap(seq: int) -> Tap:
    return Tap(7, seq, 1234, 0, int(TapKind.BUS), 1, 0)


def test_only_first_decisions_count() -> None:
    """Found by the simulation: BUSY and RETRY answers were counted as taps, and the same tap
    again when it was decided, so totals over-counted the journal."""
    r = SessionReporter([])
    taps = [_tap(s) for s in (1, 2, 3, 4, 5, 6)]
    outcomes = [
        (int(Result.OK), 200, 800, False),
        (int(Result.BUSY), 0, -1, False),
        (int(Result.RETRY), 0, -1, False),
        (int(Result.OK), 200, 600, True),  # a replay: counted the first time
        (int(Result.INSUFFICIENT_FUNDS), 0, 600, False),  # decided and journaled: a tap, no fen
        (int(Result.SEQ_TOO_OLD), 0, -1, False),
    ]
    r.record(taps, outcomes)
    assert r._acc == {7: [1, 5, 2, 200]}  # min seq, max seq, taps, charged fen
