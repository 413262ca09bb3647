"""Sends per-terminal summaries of answered taps to the TerminalSession actors, in the
background every ``interval_s`` (one call per session shard), never on the tap path."""

import asyncio
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


def seq_runs(seqs: list[int]) -> Runs:
    """Consecutive runs of the distinct seqs: [1, 2, 3, 5] -> [(1, 3), (5, 5)]."""
    runs: Runs = []
    for seq in sorted(set(seqs)):
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


class SessionReporter:
    def __init__(self, sessions: Sequence[Any], interval_s: float = 0.5) -> None:
        self._sessions = sessions
        self._interval_s = interval_s
        # terminal_id -> [seqs, taps, charged_fen]: the seqs (bounded by the taps answered in
        # one interval) so a gap inside one round is seen (seqs 1 and 3: one gap)
        self._acc: dict[int, list[Any]] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, taps: Sequence[Tap], outcomes: Sequence[Outcome | None]) -> None:
        acc = self._acc
        for tap, o in zip(taps, outcomes, strict=True):
            if o is None or o.replay or o.result in _NOT_COUNTED:
                continue  # a replay was counted the first time; BUSY and RETRY are no decision
            a = acc.get(tap.terminal_id)
            if a is None:
                acc[tap.terminal_id] = [[tap.seq], 1, o.fare_fen if o.result == _OK else 0]
            else:
                a[0].append(tap.seq)
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
        for terminal_id, (seqs, taps, charged) in acc.items():
            groups.setdefault(session_shard_of(terminal_id, n), []).append((terminal_id, seq_runs(seqs), taps, charged))
        for shard, rows in groups.items():
            try:
                await self._sessions[shard].report.remote(rows)
            except Exception as exc:  # noqa: BLE001 - totals are advisory; the journal is the record
                log.warning("session shard %s report failed: %r", shard, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()
