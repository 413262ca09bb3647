"""SessionReporter: what reaches the TerminalSession's running totals."""

import asyncio
from typing import Any

import pytest

from citycard.actors.terminal_session import TerminalSessionCore
from citycard.config.settings import load_settings
from citycard.domain.results import Result
from citycard.domain.taps import Outcome, Tap, TapKind
from citycard.gateway.sessions import SessionReporter, seq_runs


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
    assert r._acc == {7: [[1, 5], 2, 200]}  # seqs, taps, charged fen


def test_duplicate_seq_is_not_a_tap() -> None:
    """Issue 16: `terminal show` counted DUPLICATE_SEQ answers as taps (the seq's first card
    counted it; nothing is journaled for the reuse)."""
    r = SessionReporter([])
    r.record([_tap(1), _tap(1)], [Outcome(int(Result.OK), 200, 800, False),
                                  Outcome(int(Result.DUPLICATE_SEQ), 0, -1, False)])
    assert r._acc == {7: [[1], 1, 200]}


def test_seq_runs() -> None:
    assert seq_runs([5, 1, 3, 2, 3]) == [(1, 3), (5, 5)]
    assert seq_runs([9]) == [(9, 9)]


class _Store:
    async def open(self) -> None: ...
    async def load(self, n_shards: int, shard_id: int) -> list[tuple[int, bool, int, int, int, int]]:
        return [(7, True, 0, 0, 0, 0)]
    async def enabled(self, terminal_id: int) -> bool | None:
        return True
    async def save_totals(self, rows: list[tuple[int, int, int, int, int]]) -> None: ...


async def _totals_after(rounds: list[list[int]]) -> dict[str, int] | None:
    """Each round: the seqs the gateway answered OK in one reporting interval."""
    session = TerminalSessionCore(0, {**load_settings(env={}).as_dict(), "city": {
        **load_settings(env={}).as_dict()["city"], "session_shards": 1}}, store=_Store())
    for seqs in rounds:
        r = SessionReporter([_Direct(session)])
        r.record([_tap(s) for s in seqs], [Outcome(int(Result.OK), 100, 0, False)] * len(seqs))
        await r.flush()
    return await session.totals(7)


class _Direct:
    """A session actor's report method, called in-process (Ray's .remote shape)."""

    def __init__(self, core: TerminalSessionCore) -> None:
        self.report = self
        self._core = core

    async def remote(self, rows: list[Any]) -> None:
        await self._core.report(rows)


@pytest.mark.parametrize(("rounds", "gaps", "last"), [
    ([[1, 3]], 1, 3),  # issue 16: seqs 1 and 3 in one round reported no gap
    ([[1, 3, 7, 8]], 2, 8),
    ([[1], [3]], 1, 3),
    ([[1, 2, 3]], 0, 3),
    ([[5, 6], [1, 2]], 0, 6),  # an offline backlog below the highest seq: no gap
    ([[1], [5], [3]], 1, 5),  # filled later: counted when it was skipped
])
def test_gaps_inside_and_across_rounds(rounds: list[list[int]], gaps: int, last: int) -> None:
    t = asyncio.run(_totals_after(rounds))
    assert t is not None
    assert (t["seq_gaps"], t["last_seq"], t["taps"]) == (gaps, last, sum(map(len, rounds)))
