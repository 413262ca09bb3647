"""Groups taps by account shard and makes one Ray call per group, never one per tap.

Each shard has a bounded queue and a bounded number of calls in flight; a full queue answers
BUSY at once. Before that, a queue past ``pause_queue_taps`` whose shard is still answering
presses the gateway: connections stop being read (TCP backpressure, gateway/context.py) until
no such queue is over half the mark, so an overload costs the terminals time, not the gateway's
CPU on taps it must refuse. A shard that answered nothing for ``STALL_S`` is failing, not busy:
its queue does not press (its taps wait for it, then BUSY), so one dead shard does not stop
the terminals whose taps go to the others. Calls adapt to the load: while a call is in flight, another goes out only once
``pipeline_min_taps`` are queued, so at light load taps gather behind the call in flight (one
Ray call and one commit for many terminals' single taps) and at heavy load calls overlap. The ShardClient retries a failed call (shard crashed, store failed) with the
same taps until its deadline; then the taps are answered RETRY (outcome unknown, retry the
same seq).
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..actors.shard_client import ShardClient, ShardUnavailable
from ..domain.results import Result
from ..domain.shard import shard_of
from ..domain.taps import Outcome, Tap
from ..tasks import cancel_and_wait
from .metrics import Metrics
from .seqbook import SeqBook

BUSY = Outcome(int(Result.BUSY), 0, -1, False)
RETRY = Outcome(int(Result.RETRY), 0, -1, False)
DUPLICATE_SEQ = Outcome(int(Result.DUPLICATE_SEQ), 0, -1, False)
# The shard decided this seq for another card: the claim becomes that shard's marker
# (seqbook.SeqBook.release), so that card's retry gets its outcome and another shard's card is
# still refused. Not on SEQ_TOO_OLD: whose seq it was is not known, and keeping the claim
# refuses another shard's card rather than deciding the seq twice.
_DUPLICATE = int(Result.DUPLICATE_SEQ)
STALL_S = 3.0  # a lane whose shard answered no call for this long does not press (it is failing)


class Pending:
    """One terminal request (a "tap" or a "taps" batch) waiting for all its outcomes."""

    __slots__ = ("reply", "req", "single", "taps", "outcomes", "remaining", "started_s")

    def __init__(self, reply: Callable[["Pending"], None], req: int, single: bool, taps: Sequence[Tap],
                 started_s: float | None = None) -> None:
        self.reply = reply
        self.req = req
        self.single = single
        self.taps = taps
        self.outcomes: list[Outcome | None] = [None] * len(taps)
        self.remaining = len(taps)
        # perf_counter when the gateway read the request (earlier if it held it: backpressure)
        self.started_s = time.perf_counter() if started_s is None else started_s

    def settle(self, index: int, outcome: Outcome) -> None:
        self.outcomes[index] = outcome
        self.remaining -= 1
        if self.remaining == 0:
            self.reply(self)


class ShardLane:
    __slots__ = ("shard_id", "queue", "inflight", "scheduled", "label", "answered_s")

    def __init__(self, shard_id: int, now_s: float) -> None:
        self.shard_id = shard_id
        self.queue: list[tuple[Tap, Pending, int]] = []
        self.inflight = 0
        self.scheduled = False
        self.label = str(shard_id)
        self.answered_s = now_s  # loop time of the shard's last answered call (start: benefit of the doubt)


class Router:
    def __init__(
        self,
        client: ShardClient,
        hotlist: set[int] | Callable[[], set[int]],
        metrics: Metrics,
        *,
        batch_max_taps: int,
        inflight_calls: int,
        queue_max_taps: int,
        linger_ms: float,
        pipeline_min_taps: int = 1,
        pause_queue_taps: int = 0,
    ) -> None:
        self.client = client
        self._loop = asyncio.get_running_loop()
        self.lanes = [ShardLane(i, self._loop.time()) for i in range(client.n_shards)]
        self.n_shards = len(self.lanes)
        self._hotlist = hotlist
        self.metrics = metrics
        self.batch_max_taps = batch_max_taps
        self.inflight_calls = inflight_calls
        self.queue_max_taps = queue_max_taps
        self.linger_s = linger_ms / 1000.0
        # never above a full batch: a full batch may always overlap the call in flight
        self.pipeline_min_taps = max(1, min(pipeline_min_taps, batch_max_taps))
        # 0: never pressed. Released at half, so a queue near the mark does not flap.
        self.pause_queue_taps = pause_queue_taps
        self.resume_queue_taps = pause_queue_taps // 2
        self.pressed = False
        self.on_pressure: Callable[[bool], None] | None = None  # told when pressed changes
        self._stall_timer: asyncio.TimerHandle | None = None  # while pressed: a stalled lane releases
        self._tasks: set[asyncio.Task[None]] = set()
        # interop.desk.RemoteDesk when a region is configured: visitors' taps go to their
        # issuer over the link (docs/interop.md); None: every tap goes to this city's shards.
        self.remote: Any = None
        # (terminal, seq) -> card across shards, for terminals' taps (None: each shard dedupes
        # its own cards only); the gateway claims, the router releases what a shard disowns.
        self.seqs: SeqBook | None = None

    def home(self, card_no: int) -> int:
        """The shard that decides a card's taps; -1: none of ours (a visitor's, its issuer)."""
        remote = self.remote
        if remote is not None and remote.claims(card_no):
            return -1
        return shard_of(card_no, self.n_shards)

    def hotlist(self) -> set[int]:
        h = self._hotlist
        return h() if callable(h) else h

    def submit(self, pending: Pending, admit: int | None = None, refused: Sequence[int] = ()) -> None:
        """``admit``: only the first ``admit`` taps may queue (a per-terminal limit); the rest BUSY.
        ``refused``: indexes of taps whose seq is held for another card (SeqBook.claim)."""
        hot = self.hotlist()
        lanes = self.lanes
        n = self.n_shards
        touched: dict[ShardLane, None] = {}  # ordered, so a seeded simulation replays exactly
        remote = self.remote
        dup = set(refused) if refused else None
        for i, tap in enumerate(pending.taps):
            if dup is not None and i in dup:  # the seq is held for another card: decided once, by it
                pending.settle(i, DUPLICATE_SEQ)
                continue
            if remote is not None and remote.claims(tap.card_no):
                if admit is not None and i >= admit:  # the terminal's rate limit holds for visitors too
                    self.metrics.busy.inc()
                    pending.settle(i, BUSY)
                else:
                    remote.submit(tap, pending, i)  # another city's card: its issuer decides
                continue
            if tap.card_no in hot:
                # Refused without fare rules, but through the shard: a retry of a tap charged
                # before the card was listed must get its first outcome, and the refusal is
                # journaled like every other answer.
                tap = Tap(tap.terminal_id, tap.seq, tap.card_no, tap.time_ms, tap.kind, tap.route,
                          tap.amount_fen, True, tap.bill_class)
            lane = lanes[shard_of(tap.card_no, n)]
            if (admit is not None and i >= admit) or len(lane.queue) >= self.queue_max_taps:
                self.metrics.busy.inc()
                pending.settle(i, BUSY)
                continue
            lane.queue.append((tap, pending, i))
            touched[lane] = None
        for lane in touched:
            self._schedule(lane)
            if (self.pause_queue_taps and not self.pressed and len(lane.queue) >= self.pause_queue_taps
                    and self._loop.time() - lane.answered_s < STALL_S):
                self._press(True)

    def _holds(self, lane: ShardLane, now_s: float) -> bool:
        """This lane keeps the gateway pressed: over half the mark, and its shard answering."""
        return len(lane.queue) > self.resume_queue_taps and now_s - lane.answered_s < STALL_S

    def _maybe_release(self) -> None:
        now_s = self._loop.time()
        if self.pressed and not any(self._holds(lane, now_s) for lane in self.lanes):
            self._press(False)

    def _stall_check(self) -> None:
        self._stall_timer = None
        self._maybe_release()
        if self.pressed:
            self._stall_timer = self._loop.call_later(STALL_S / 2, self._stall_check)

    def _press(self, pressed: bool) -> None:
        self.pressed = pressed
        self.metrics.backpressure.set(int(pressed))
        if pressed:
            self.metrics.backpressure_episodes.inc()
            if self._stall_timer is None:
                self._stall_timer = self._loop.call_later(STALL_S / 2, self._stall_check)
        if self.on_pressure is not None:
            self.on_pressure(pressed)

    def _schedule(self, lane: ShardLane) -> None:
        if lane.scheduled or lane.inflight >= self.inflight_calls or not lane.queue:
            return
        if lane.inflight and len(lane.queue) < self.pipeline_min_taps:
            return  # gathers behind the call in flight; its end schedules the lane again
        if len(lane.queue) >= self.batch_max_taps or self.linger_s <= 0:
            lane.scheduled = True
            self._loop.call_soon(self._flush, lane)
        else:
            lane.scheduled = True
            self._loop.call_later(self.linger_s, self._flush, lane)

    def _flush(self, lane: ShardLane) -> None:
        lane.scheduled = False
        while lane.queue and lane.inflight < self.inflight_calls and (
                not lane.inflight or len(lane.queue) >= self.pipeline_min_taps):
            batch = lane.queue[: self.batch_max_taps]
            del lane.queue[: self.batch_max_taps]
            lane.inflight += 1
            task = self._loop.create_task(self._call(lane, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.pressed:
            self._maybe_release()
        self.metrics.shard_queue.labels(lane.label).set(len(lane.queue))
        self.metrics.shard_inflight.labels(lane.label).set(lane.inflight)

    async def _call(self, lane: ShardLane, batch: list[tuple[Tap, Pending, int]]) -> None:
        self.metrics.shard_batch.observe(len(batch))
        outcomes: Sequence[Outcome] | None = None
        try:
            answer = await self.client.apply_taps(lane.shard_id, [t for t, _, _ in batch])
            outcomes = answer.outcomes
            lane.answered_s = self._loop.time()
            self.metrics.shard_call_latency.observe(answer.call_s)
            if answer.commit_ms:
                self.metrics.commit_latency.labels(lane.label).observe(answer.commit_ms / 1000.0)
        except ShardUnavailable:
            pass  # logged by the client; the taps are answered RETRY below
        finally:
            lane.inflight -= 1
            if outcomes is None:
                for _, pending, index in batch:
                    pending.settle(index, RETRY)
            else:
                seqs = self.seqs
                for (tap, pending, index), outcome in zip(batch, outcomes, strict=True):
                    if seqs is not None and outcome.result == _DUPLICATE:
                        seqs.release(tap.terminal_id, tap.seq, tap.card_no, lane.shard_id)
                    pending.settle(index, outcome)
            self._schedule(lane)

    async def close(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        await cancel_and_wait(list(self._tasks))
