"""SessionReporter: what reaches the TerminalSession's running totals."""

import asyncio
import random
import time
import tracemalloc
from typing import Any

import pytest

from citycard.actors.terminal_session import TerminalSessionCore
from citycard.config.settings import load_settings
from citycard.domain.results import Result
from citycard.domain.shard import session_shard_of
from citycard.domain.taps import Outcome, Tap, TapKind
from citycard.gateway.sessions import MAX_RUNS, Runs, SessionReporter, add_seq


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
    assert r._acc == {7: [[(1, 1), (5, 5)], 2, 200]}  # runs of seqs, taps, charged fen


def test_duplicate_seq_is_not_a_tap() -> None:
    """Issue 16: `terminal show` counted DUPLICATE_SEQ answers as taps (the seq's first card
    counted it; nothing is journaled for the reuse)."""
    r = SessionReporter([])
    r.record([_tap(1), _tap(1)], [Outcome(int(Result.OK), 200, 800, False),
                                  Outcome(int(Result.DUPLICATE_SEQ), 0, -1, False)])
    assert r._acc == {7: [[(1, 1)], 1, 200]}


def _runs_of(seqs: list[int]) -> Runs:
    runs: Runs = []
    for seq in sorted(set(seqs)):
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def test_add_seq_keeps_the_runs_of_what_arrived() -> None:
    rng = random.Random(16)
    for _ in range(300):
        seqs = [rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
        runs: Runs = []
        for seq in seqs:
            add_seq(runs, seq, max_runs=1000)
        assert runs == _runs_of(seqs), seqs


def test_add_seq_merges_the_lowest_runs_above_the_cap() -> None:
    runs: Runs = []
    for seq in (1, 3, 5, 7):
        add_seq(runs, seq, max_runs=3)
    assert runs == [(1, 3), (5, 5), (7, 7)]


class _Hung:
    """A session shard that never answers (hung, or restarting)."""

    def __init__(self) -> None:
        self.report = self
        self.calls = 0

    def remote(self, rows: list[Any]) -> asyncio.Future[None]:
        self.calls += 1
        return asyncio.get_running_loop().create_future()


class _Taken:
    def __init__(self) -> None:
        self.report = self
        self.rows: list[Any] = []

    async def remote(self, rows: list[Any]) -> None:
        self.rows += rows


def test_memory_stays_bounded_while_a_session_shard_hangs() -> None:
    """Review finding: one int a tap was kept until reported, and the report had no timeout:
    a hung shard made the gateway grow ~36 bytes a tap. 60,000 taps, every third seq skipped."""
    async def go() -> None:
        hung = _Hung()
        r = SessionReporter([hung])
        ok = [Outcome(int(Result.OK), 100, 0, False)] * 100
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for start in range(1, 90_001, 150):
            r.record([_tap(s) for s in range(start, start + 150) if s % 3][:100], ok)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert r._acc[7][1] == 60_000
        assert used < 20_000, used  # bytes, for 60,000 taps of one terminal
        assert len(r._acc[7][0]) <= MAX_RUNS

    asyncio.run(go())


def test_a_hung_shard_times_out_and_holds_back_no_other() -> None:
    async def go() -> None:
        hung, taken = _Hung(), _Taken()
        r = SessionReporter([hung, taken], report_timeout_s=0.2)
        a = next(t for t in range(1, 100) if session_shard_of(t, 2) == 0)
        b = next(t for t in range(1, 100) if session_shard_of(t, 2) == 1)
        ok = Outcome(int(Result.OK), 100, 0, False)
        r.record([Tap(a, 1, 1234, 0, 1, 1, 0), Tap(b, 4, 1234, 0, 1, 1, 0)], [ok, ok])
        t0 = time.monotonic()
        await asyncio.wait_for(r.flush(), 5.0)
        assert time.monotonic() - t0 < 2.0
        assert hung.calls == 1 and taken.rows == [(b, [(4, 4)], 1, 100)]
        assert r._acc == {}  # what the hung shard was not given is dropped, as a failed report

    asyncio.run(go())


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
