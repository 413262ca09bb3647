"""Sends per-terminal summaries of answered taps to the TerminalSession actors, in the
background every ``interval_s`` (one call per session shard), never on the tap path.

Bounded while a session shard hangs or restarts: a terminal's seqs are kept as runs, merged
as taps arrive, at most MAX_RUNS of them (a terminal skipping seqs more often than that in one
round has its lowest gaps merged away: its gap count reads low); a report call gets
``report_timeout_s``, and what it could not report is dropped, like a failed one (totals are
advisory, the journal is the record: `terminal show --exact`).
"""

import asyncio
import bisect
import logging
from collections.abc import Sequence
from typing import Any

from ..domain.results import Result
from ..domain.shard import session_shard_of
from ..domain.taps import Outcome, Tap
from ..tasks import cancel_and_wait

log = logging.getLogger(__name__)
_OK = int(Result.OK)
# No journal row behind them: BUSY and RETRY are sent again; SEQ_TOO_OLD is a seq below the
# shard's watermark, decided and counted long ago or never; DUPLICATE_SEQ reuses a seq decided
# for another card, which counted it (protocol section 9).
_NOT_COUNTED = frozenset((int(Result.BUSY), int(Result.RETRY), int(Result.SEQ_TOO_OLD),
                          int(Result.DUPLICATE_SEQ)))
Runs = list[tuple[int, int]]  # (first seq, last seq) of consecutive seqs, ascending
MAX_RUNS = 32  # a terminal's runs kept between reports: ~4 KB at most
REPORT_TIMEOUT_S = 5.0


def add_seq(runs: Runs, seq: int, max_runs: int = MAX_RUNS) -> None:
    """Add ``seq`` to ascending, disjoint, non-adjacent ``runs`` in place; above ``max_runs``
    the two lowest runs merge (one gap less reported)."""
    if runs:
        lo, hi = runs[-1]
        if seq == hi + 1:  # the common case: the next seq
            runs[-1] = (lo, seq)
            return
        if seq > hi + 1:
            runs.append((seq, seq))
        else:
            i = bisect.bisect_right(runs, seq, key=_first) - 1  # the last run starting at or below seq
            if i >= 0 and runs[i][1] >= seq:
                return  # held already
            left = i >= 0 and runs[i][1] + 1 == seq
            right = i + 1 < len(runs) and runs[i + 1][0] == seq + 1
            if left and right:
                runs[i:i + 2] = [(runs[i][0], runs[i + 1][1])]
            elif left:
                runs[i] = (runs[i][0], seq)
            elif right:
                runs[i + 1] = (seq, runs[i + 1][1])
            else:
                runs.insert(i + 1, (seq, seq))
    else:
        runs.append((seq, seq))
    if len(runs) > max_runs:
        runs[0:2] = [(runs[0][0], runs[1][1])]


def _first(run: tuple[int, int]) -> int:
    return run[0]


class SessionReporter:
    def __init__(self, sessions: Sequence[Any], interval_s: float = 0.5,
                 report_timeout_s: float = REPORT_TIMEOUT_S) -> None:
        self._sessions = sessions
        self._interval_s = interval_s
        self._report_timeout_s = report_timeout_s
        # terminal_id -> [runs, taps, charged_fen]: the runs so a gap inside one round is seen
        # (seqs 1 and 3: one gap), at most MAX_RUNS a terminal
        self._acc: dict[int, list[Any]] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, taps: Sequence[Tap], outcomes: Sequence[Outcome | None]) -> None:
        acc = self._acc
        for tap, o in zip(taps, outcomes, strict=True):
            if o is None or o.replay or o.result in _NOT_COUNTED:
                continue  # a replay was counted the first time; BUSY and RETRY are no decision
            a = acc.get(tap.terminal_id)
            if a is None:
                acc[tap.terminal_id] = [[(tap.seq, tap.seq)], 1, o.fare_fen if o.result == _OK else 0]
            else:
                add_seq(a[0], tap.seq)
                a[1] += 1
                if o.result == _OK:
                    a[2] += o.fare_fen

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        await self.flush()

    async def flush(self) -> None:
        acc, self._acc = self._acc, {}
        if not acc:
            return
        n = len(self._sessions)
        groups: dict[int, list[tuple[int, Runs, int, int]]] = {}
        for terminal_id, (runs, taps, charged) in acc.items():
            groups.setdefault(session_shard_of(terminal_id, n), []).append((terminal_id, runs, taps, charged))
        # at once, so one hung shard does not hold back the others' totals
        await asyncio.gather(*(self._report(shard, rows) for shard, rows in groups.items()))

    async def _report(self, shard: int, rows: list[tuple[int, Runs, int, int]]) -> None:
        try:
            await asyncio.wait_for(self._sessions[shard].report.remote(rows), self._report_timeout_s)
        except TimeoutError:
            log.warning("session shard %s report timed out after %.1f s: %d terminals' totals dropped",
                        shard, self._report_timeout_s, len(rows))
        except Exception as exc:  # noqa: BLE001 - totals are advisory; the journal is the record
            log.warning("session shard %s report failed: %r", shard, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()
