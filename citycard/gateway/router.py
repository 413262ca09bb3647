"""Groups taps by account shard and makes one Ray call per group, never one per tap.

Each shard has a bounded queue and a bounded number of calls in flight; a full queue answers
BUSY at once. A failed call (shard crashed, store failed) is retried with the same taps until
``retry_deadline_ms``; then its taps are answered RETRY (outcome unknown, retry same seq).
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ..domain.results import Result
from ..domain.shard import shard_of
from ..domain.taps import Tap
from ..tasks import cancel_and_wait
from .metrics import Metrics

log = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder()
_outcomes_decoder = msgspec.msgpack.Decoder(list[tuple[int, int, int, bool]])
_BUSY = int(Result.BUSY)
_RETRY = int(Result.RETRY)
RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)


class Pending:
    """One terminal request (a "tap" or a "taps" batch) waiting for all its outcomes."""

    __slots__ = ("reply", "req", "single", "taps", "outcomes", "remaining", "started_s")

    def __init__(self, reply: Callable[["Pending"], None], req: int, single: bool, taps: Sequence[Tap]) -> None:
        self.reply = reply
        self.req = req
        self.single = single
        self.taps = taps
        self.outcomes: list[tuple[int, int, int, bool] | None] = [None] * len(taps)
        self.remaining = len(taps)
        self.started_s = time.perf_counter()

    def settle(self, index: int, outcome: tuple[int, int, int, bool]) -> None:
        self.outcomes[index] = outcome
        self.remaining -= 1
        if self.remaining == 0:
            self.reply(self)


class ShardLane:
    __slots__ = ("shard_id", "actor", "queue", "inflight", "scheduled", "label")

    def __init__(self, shard_id: int, actor: Any) -> None:
        self.shard_id = shard_id
        self.actor = actor
        self.queue: list[tuple[Tap, Pending, int]] = []
        self.inflight = 0
        self.scheduled = False
        self.label = str(shard_id)


class Router:
    def __init__(
        self,
        actors: Sequence[Any],
        hotlist: set[int] | Callable[[], set[int]],
        metrics: Metrics,
        *,
        batch_max_taps: int,
        inflight_calls: int,
        queue_max_taps: int,
        retry_deadline_ms: int,
        linger_ms: float,
        call_timeout_ms: int = 30_000,
    ) -> None:
        self.lanes = [ShardLane(i, a) for i, a in enumerate(actors)]
        self.n_shards = len(self.lanes)
        self._hotlist = hotlist
        self.metrics = metrics
        self.batch_max_taps = batch_max_taps
        self.inflight_calls = inflight_calls
        self.queue_max_taps = queue_max_taps
        self.retry_deadline_s = retry_deadline_ms / 1000.0
        self.linger_s = linger_ms / 1000.0
        # A shard call that hangs (a stuck commit) would hold its in-flight slot for good: it is
        # given up after this and retried like a failed one (the retry is deduplicated).
        self.call_timeout_s = call_timeout_ms / 1000.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    def hotlist(self) -> set[int]:
        h = self._hotlist
        return h() if callable(h) else h

    def submit(self, pending: Pending, admit: int | None = None) -> None:
        """``admit``: only the first ``admit`` taps may queue (a per-terminal limit); the rest BUSY."""
        hot = self.hotlist()
        lanes = self.lanes
        n = self.n_shards
        touched: dict[ShardLane, None] = {}  # ordered, so a seeded simulation replays exactly
        for i, tap in enumerate(pending.taps):
            if tap.card_no in hot:
                # Refused without fare rules, but through the shard: a retry of a tap charged
                # before the card was listed must get its first outcome, and the refusal is
                # journaled like every other answer.
                tap = Tap(tap.terminal_id, tap.seq, tap.card_no, tap.time_ms, tap.kind, tap.route,
                          tap.amount_fen, True, tap.bill_class)
            lane = lanes[shard_of(tap.card_no, n)]
            if (admit is not None and i >= admit) or len(lane.queue) >= self.queue_max_taps:
                self.metrics.busy.inc()
                pending.settle(i, (_BUSY, 0, -1, False))
                continue
            lane.queue.append((tap, pending, i))
            touched[lane] = None
        for lane in touched:
            self._schedule(lane)

    def _schedule(self, lane: ShardLane) -> None:
        if lane.scheduled or lane.inflight >= self.inflight_calls or not lane.queue:
            return
        if len(lane.queue) >= self.batch_max_taps or self.linger_s <= 0:
            lane.scheduled = True
            self._loop.call_soon(self._flush, lane)
        else:
            lane.scheduled = True
            self._loop.call_later(self.linger_s, self._flush, lane)

    def _flush(self, lane: ShardLane) -> None:
        lane.scheduled = False
        while lane.queue and lane.inflight < self.inflight_calls:
            batch = lane.queue[: self.batch_max_taps]
            del lane.queue[: self.batch_max_taps]
            lane.inflight += 1
            task = self._loop.create_task(self._call(lane, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.metrics.shard_queue.labels(lane.label).set(len(lane.queue))
        self.metrics.shard_inflight.labels(lane.label).set(lane.inflight)

    async def _call(self, lane: ShardLane, batch: list[tuple[Tap, Pending, int]]) -> None:
        payload = _encoder.encode([t for t, _, _ in batch])
        self.metrics.shard_batch.observe(len(batch))
        loop = self._loop
        deadline = loop.time() + self.retry_deadline_s
        attempt = 0
        outcomes: list[tuple[int, int, int, bool]] | None = None
        try:
            while True:
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(self.call_timeout_s):  # not wait_for: see AccountShardCore
                        packed, commit_ms = await lane.actor.apply.remote(payload)
                    outcomes = _outcomes_decoder.decode(packed)
                    self.metrics.shard_call_latency.observe(time.perf_counter() - started)
                    if commit_ms:
                        self.metrics.commit_latency.observe(commit_ms / 1000.0)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a dead actor or a failed store
                    self.metrics.shard_retries.labels(lane.label).inc()
                    if loop.time() >= deadline:
                        log.warning("shard %s: giving up after %d tries: %r", lane.shard_id, attempt + 1, exc)
                        break
                    await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
                    attempt += 1
        finally:
            lane.inflight -= 1
            if outcomes is None:
                retry = (_RETRY, 0, -1, False)
                for _, pending, index in batch:
                    pending.settle(index, retry)
            else:
                for (_, pending, index), outcome in zip(batch, outcomes, strict=True):
                    pending.settle(index, outcome)
            self._schedule(lane)

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks))
