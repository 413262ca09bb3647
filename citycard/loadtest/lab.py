"""One load phase: sender processes, live aggregation, and the merged account of the run.

The parent spawns the senders, waits until every one has its connections up, then sets the
run's origin on the wall clock; from then on each sender follows its own Poisson schedule.
Reports come back over a multiprocessing queue once a second and at the end.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_mod
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from ..domain.results import Result
from ..errors import CityCardError
from .city import TerminalPlan, terminal_tap_weights
from .latency import (
    IntervalSnapshot,
    LatencyTotals,
    decode_histogram,
    merge_intervals,
    new_histogram,
)
from .offline_sender import OfflineSpec, offline_main
from .schedule import RateProfile, Scaled, expected_count
from .sender import SenderSpec, sender_main
from .tapmix import TapMix

READY_TIMEOUT_S = 120.0
ORIGIN_LEAD_S = 0.3  # senders learn the origin this long before it


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    master_key: bytes


@dataclass(frozen=True)
class Phase:
    """One open-loop load phase."""

    name: str
    profile: RateProfile
    duration_s: float
    max_taps: int
    mix: TapMix = TapMix()
    senders: int = 2
    linger_ms: float = 2.0
    max_batch: int = 200
    timeout_ms: float = 10_000.0
    replay_share: float = 0.01
    seed: int = 1


@dataclass
class PhaseResult:
    phase: Phase
    totals: LatencyTotals
    intervals: list[IntervalSnapshot]
    offered: dict[int, int]
    codes: Counter[str]
    retryable: int
    reconnects: int
    charged_fen: int
    replays_sent: int
    replays_matched: int
    answered_files: list[str]
    last_seq: dict[int, int]
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    sender_cpu_s: float = 0.0  # CPU the senders used while sending (their own count)
    extra: dict[str, Any] = field(default_factory=dict)  # what the caller measured alongside
    offline: dict[str, Any] | None = None  # the offline uploader's final report (offline mode)

    @property
    def scheduled(self) -> int:
        return sum(self.offered.values())

    @property
    def accepted_per_s(self) -> float:
        """Taps answered with a final code per second of the schedule (answers to the
        schedule's taps that come after its end still count: they were accepted late)."""
        return self.totals.answered / self.phase.duration_s if self.phase.duration_s else 0.0

    @property
    def offered_per_s(self) -> float:
        return self.scheduled / self.phase.duration_s if self.phase.duration_s else 0.0


def pick_terminals(city: Sequence[TerminalPlan], n: int, seed: int) -> list[TerminalPlan]:
    """``n`` of the city's terminals, every kind present when ``n`` allows, the rest in the
    city's own proportions."""
    if n >= len(city):
        return list(city)
    rng = random.Random(seed)
    by_kind: dict[int, list[TerminalPlan]] = {}
    for t in city:
        by_kind.setdefault(t.kind, []).append(t)
    chosen: list[TerminalPlan] = []
    for plans in by_kind.values():
        if len(chosen) < n:
            chosen.append(plans[rng.randrange(len(plans))])
    ids = {t.terminal_id for t in chosen}
    rest = [t for t in city if t.terminal_id not in ids]
    chosen += rng.sample(rest, n - len(chosen))
    return sorted(chosen, key=lambda t: t.terminal_id)


class LiveLine:
    """The line an operator watches: offered and accepted rate, p50/p99 so far, codes."""

    def __init__(self, phase: Phase, enabled: bool) -> None:
        total = int(min(phase.max_taps, expected_count(phase.profile, 0.0, phase.duration_s * 1000.0)))
        self.bar = tqdm(total=total, unit="tap", desc=phase.name, disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.3)
        self.histogram = new_histogram()
        self.answered = 0

    def update(self, intervals: list[IntervalSnapshot], by_index: dict[int, list[int]],
               codes: Counter[str], outstanding: int) -> None:
        for snap in intervals:
            if snap.answered:
                self.histogram.add(decode_histogram(snap.histogram_b64))
            self.answered += snap.answered
        self.bar.update(max(self.answered - self.bar.n, 0))
        last = max((i for i, (o, a) in by_index.items() if a), default=None)
        offered = accepted = 0
        if last is not None:
            offered, accepted = by_index[last]
        p50 = self.histogram.get_value_at_percentile(50) / 1000.0
        p99 = self.histogram.get_value_at_percentile(99) / 1000.0
        errs = " ".join(f"{k} {v:,}" for k, v in codes.most_common() if k != "OK")
        self.bar.set_postfix_str(f"offered {offered:,}/s accepted {accepted:,}/s p50 {p50:.1f} ms "
                                 f"p99 {p99:.1f} ms in flight {outstanding:,} | {errs or 'no refusals'}",
                                 refresh=False)

    def close(self) -> None:
        self.bar.close()


async def run_phase(phase: Phase, endpoint: Endpoint, terminals: list[TerminalPlan],
                    home_cards: Sequence[int], visitor_cards: Sequence[int], first_seq: dict[int, int],
                    *, show_live: bool = True,
                    during: Callable[[float], Any] | None = None,
                    offline: OfflineSpec | None = None) -> PhaseResult:
    """Run one phase to its end. ``during(origin_unix_s)`` (a coroutine function) runs
    alongside the load, e.g. a hotlist storm, and is awaited before the phase returns.
    ``offline``: a process of validators uploading offline records alongside, from the same
    origin (offline_sender.py)."""
    n_senders = max(1, min(phase.senders, len(terminals)))
    ctx = multiprocessing.get_context("spawn")
    reports: Any = ctx.Queue(maxsize=10_000)
    origin = ctx.Value("d", 0.0)
    out_dir = tempfile.mkdtemp(prefix="citycard-load-")
    weights = terminal_tap_weights(terminals)
    total_weight = sum(weights)
    procs = []
    for i in range(n_senders):
        mine = list(range(i, len(terminals), n_senders))
        share = sum(weights[j] for j in mine) / total_weight
        spec = SenderSpec(
            index=i, host=endpoint.host, port=endpoint.port, master_key=endpoint.master_key,
            terminals=[terminals[j] for j in mine],
            first_seq={terminals[j].terminal_id: first_seq.get(terminals[j].terminal_id, 1) for j in mine},
            terminal_weights=[weights[j] for j in mine], home_cards=home_cards, visitor_cards=visitor_cards,
            mix=phase.mix, profile=Scaled(phase.profile, share),
            max_count=max(1, round(phase.max_taps * share)), duration_ms=phase.duration_s * 1000.0,
            seed=phase.seed, origin_unix_s=0.0, out_dir=out_dir, linger_ms=phase.linger_ms,
            max_batch=phase.max_batch, timeout_ms=phase.timeout_ms, replay_share=phase.replay_share,
        )
        proc = ctx.Process(target=sender_main, args=(spec, reports, origin), daemon=True,
                           name=f"citycard-sender-{i}")
        proc.start()
        procs.append(proc)
    if offline is not None:
        proc = ctx.Process(target=offline_main, args=(offline, reports, origin), daemon=True,
                           name="citycard-offline-uploader")
        proc.start()
        procs.append(proc)
    loop = asyncio.get_running_loop()
    live = LiveLine(phase, show_live)
    result = _Merge(n_senders, offline is not None)
    side: asyncio.Task[Any] | None = None
    started = time.perf_counter()
    try:
        await _wait_ready(loop, reports, procs, result, f"{endpoint.host}:{endpoint.port}")
        origin_unix_s = time.time() + ORIGIN_LEAD_S
        origin.value = origin_unix_s
        if during is not None:
            side = loop.create_task(during(origin_unix_s))
        limit_s = ORIGIN_LEAD_S + phase.duration_s + phase.timeout_ms / 1000.0 + 90.0
        deadline = time.monotonic() + limit_s
        while not result.all_done() and time.monotonic() < deadline:
            msg = await loop.run_in_executor(None, _get, reports, 0.5)
            if msg is not None:
                result.take(msg)
                live.update(result.fresh_intervals(), result.rates(), result.codes, result.outstanding())
            elif not any(p.is_alive() for p in procs) and not result.all_done():
                result.errors.append("a sender process died without a report")
                break
        if result.done < n_senders:
            result.errors.append(f"{n_senders - result.done} sender(s) did not finish within {limit_s:.0f} s")
        if result.wants_offline and result.offline is None:
            result.errors.append(f"the offline uploader did not finish within {limit_s:.0f} s")
        if side is not None:
            await side
    finally:
        live.close()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return result.finish(phase, time.perf_counter() - started)


def _get(q: Any, timeout_s: float) -> dict[str, Any] | None:
    try:
        msg: dict[str, Any] = q.get(True, timeout_s)
        return msg
    except queue_mod.Empty:
        return None


class TargetUnreachable(CityCardError):
    """The senders could not connect to (or authenticate at) the target: nothing was sent."""


async def _wait_ready(loop: asyncio.AbstractEventLoop, reports: Any, procs: list[Any], merge: _Merge,
                      target: str) -> None:
    ready = 0
    deadline = time.monotonic() + READY_TIMEOUT_S
    while ready < len(procs):
        if time.monotonic() > deadline:
            raise TargetUnreachable(f"the target {target}: senders not connected within {READY_TIMEOUT_S:.0f} s;"
                                    " no tap was sent")
        msg = await loop.run_in_executor(None, _get, reports, 0.5)
        if msg is None:
            if not all(p.is_alive() for p in procs):
                raise RuntimeError("a sender process died while connecting")
            continue
        if msg["kind"] == "ready":
            ready += 1
        elif msg["kind"] == "failed":
            raise TargetUnreachable(f"the target {target} closed or refused connections before any tap was sent "
                                    f"(sender {msg['sender']}: {msg['error']})")
        elif msg["kind"] == "offline_failed":
            raise RuntimeError(f"the offline uploader failed: {msg['error']}")
        else:
            merge.take(msg)


class _Merge:
    """Everything the senders reported, merged."""

    def __init__(self, n_senders: int, wants_offline: bool = False) -> None:
        self.n_senders = n_senders
        self.wants_offline = wants_offline
        self.offline: dict[str, Any] | None = None
        self.done = 0
        self.intervals: list[IntervalSnapshot] = []
        self._fresh: list[IntervalSnapshot] = []
        self.offered: Counter[int] = Counter()
        self.answered_by_index: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.outstanding_by_sender: dict[int, int] = {}
        self.retryable: dict[int, int] = {}
        self.reconnects: dict[int, int] = {}
        self.totals: list[LatencyTotals] = []
        self.files: list[str] = []
        self.last_seq: dict[int, int] = {}
        self.errors: list[str] = []
        self.charged_fen = self.replays_sent = self.replays_matched = 0
        self.sender_cpu_s = 0.0

    def all_done(self) -> bool:
        return self.done >= self.n_senders and (not self.wants_offline or self.offline is not None)

    def take(self, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        if kind == "offline_failed":
            self.errors.append(f"offline uploader failed: {msg['error']}")
            self.offline = {"failed": msg["error"]}
            return
        if kind == "offline_done":
            self.offline = msg
            self.errors += [f"offline: {e}" for e in msg.get("errors", [])]
            return
        if kind == "failed":
            self.errors.append(f"sender {msg['sender']} failed: {msg['error']}")
            self.done += 1
            return
        for wire in msg.get("intervals", ()):
            snap = IntervalSnapshot.from_wire(wire)
            self.intervals.append(snap)
            self._fresh.append(snap)
            self.answered_by_index[snap.index] += snap.answered
        self.offered.update({int(k): v for k, v in msg.get("offered", {}).items()})
        for code, n in msg.get("codes", {}).items():
            self.codes[_code_name(int(code))] += n
        sender = msg["sender"]
        self.outstanding_by_sender[sender] = msg.get("outstanding", 0)
        self.retryable[sender] = msg.get("retryable", 0)
        self.reconnects[sender] = msg.get("reconnects", 0)
        if kind == "done":
            self.done += 1
            self.totals.append(LatencyTotals.from_wire(msg["totals"]))
            self.files.append(msg["answered_file"])
            self.last_seq.update({int(k): v for k, v in msg.get("last_seq", {}).items()})
            self.errors += msg.get("errors", [])
            self.errors += [f"replay differs: {x}" for x in msg.get("replay_mismatches", [])]
            self.charged_fen += msg.get("charged_fen", 0)
            self.replays_sent += msg.get("replays_sent", 0)
            self.replays_matched += msg.get("replays_matched", 0)
            self.sender_cpu_s += msg.get("cpu_s", 0.0)

    def fresh_intervals(self) -> list[IntervalSnapshot]:
        fresh, self._fresh = self._fresh, []
        return fresh

    def rates(self) -> dict[int, list[int]]:
        """interval index -> [offered, answered], for intervals every sender has closed."""
        return {i: [self.offered.get(i, 0), self.answered_by_index.get(i, 0)] for i in self.answered_by_index}

    def outstanding(self) -> int:
        return sum(self.outstanding_by_sender.values())

    def finish(self, phase: Phase, elapsed_s: float) -> PhaseResult:
        totals = LatencyTotals.merge(self.totals) if self.totals else LatencyTotals.merge([])
        return PhaseResult(
            phase=phase, totals=totals, intervals=merge_intervals(self.intervals), offered=dict(self.offered),
            codes=self.codes, retryable=sum(self.retryable.values()), reconnects=sum(self.reconnects.values()),
            charged_fen=self.charged_fen, replays_sent=self.replays_sent, replays_matched=self.replays_matched,
            answered_files=self.files, last_seq=self.last_seq, errors=self.errors, elapsed_s=elapsed_s,
            sender_cpu_s=self.sender_cpu_s, offline=self.offline,
        )


def _code_name(code: int) -> str:
    try:
        return Result(code).name
    except ValueError:
        return f"CODE_{code}"
