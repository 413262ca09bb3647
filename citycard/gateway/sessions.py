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
# shard's watermark, decided and counted long ago or never (protocol section 9).
_NOT_COUNTED = frozenset((int(Result.BUSY), int(Result.RETRY), int(Result.SEQ_TOO_OLD)))


class SessionReporter:
    def __init__(self, sessions: Sequence[Any], interval_s: float = 0.5) -> None:
        self._sessions = sessions
        self._interval_s = interval_s
        # terminal_id -> [min_seq, max_seq, taps, charged_fen]
        self._acc: dict[int, list[int]] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, taps: Sequence[Tap], outcomes: Sequence[Outcome | None]) -> None:
        acc = self._acc
        for tap, o in zip(taps, outcomes, strict=True):
            if o is None or o.replay or o.result in _NOT_COUNTED:
                continue  # a replay was counted the first time; BUSY and RETRY are no decision
            a = acc.get(tap.terminal_id)
            if a is None:
                acc[tap.terminal_id] = [tap.seq, tap.seq, 1, o.fare_fen if o.result == _OK else 0]
            else:
                if tap.seq < a[0]:
                    a[0] = tap.seq
                if tap.seq > a[1]:
                    a[1] = tap.seq
                a[2] += 1
                if o.result == _OK:
                    a[3] += o.fare_fen

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
        groups: dict[int, list[tuple[int, int, int, int, int]]] = {}
        for terminal_id, (lo, hi, taps, charged) in acc.items():
            groups.setdefault(session_shard_of(terminal_id, n), []).append((terminal_id, lo, hi, taps, charged))
        for shard, rows in groups.items():
            try:
                await self._sessions[shard].report.remote(rows)
            except Exception as exc:  # noqa: BLE001 - totals are advisory; the journal is the record
                log.warning("session shard %s report failed: %r", shard, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()
