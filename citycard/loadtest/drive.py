"""Closed-window load driver for the demo: terminals pipeline tap batches over real TCP.

(The open-loop generator with coordinated-omission-free latency is the load lab's job; this
driver keeps a bounded window of requests per terminal and measures send-to-durable-answer.)
"""

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from ..domain.results import Result
from ..domain.taps import TapKind
from ..protocols import messages as m
from ..terminal.client import TerminalClient
from .city import TerminalPlan, card_numbers


@dataclass(frozen=True)
class DriveSpec:
    host: str
    port: int
    master_key: bytes
    terminals: list[TerminalPlan]
    n_cards: int
    n_taps: int
    batch_taps: int = 50
    window: int = 4  # requests outstanding per terminal
    retry_share: float = 0.01  # share of batches sent a second time with the same seqs
    unknown_card_share: float = 0.002
    seed: int = 7
    time_limit_s: float = 600.0


@dataclass
class DriveResult:
    taps_sent: int = 0
    taps_answered: int = 0
    first_answers: int = 0
    replays_sent: int = 0
    replays_matched: int = 0  # retries answered with the first outcome, replay=true
    by_code: Counter[str] = field(default_factory=Counter)
    charged_fen: int = 0
    elapsed_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False


_PAIRS = {TapKind.BIKE_RENT: TapKind.BIKE_RETURN, TapKind.PARKING_ENTRY: TapKind.PARKING_EXIT}


def _item(rng: random.Random, plan: TerminalPlan, seq: int, cards: list[int], unknown_share: float,
          open_pairs: set[int]) -> m.TapItem:
    """One tap as this terminal would send it. Docks and lots close what they opened."""
    kind = plan.kind
    route = plan.route
    amount = bill_class = 0
    if kind in _PAIRS and open_pairs and rng.random() < 0.5:
        card = open_pairs.pop()
        kind = _PAIRS[kind]
    else:
        card = cards[rng.randrange(len(cards))]
        if rng.random() < unknown_share:
            card = 999_000_000_000_000 + rng.randrange(1_000_000)  # no such card
        if kind in _PAIRS:
            open_pairs.add(card)
    if kind == TapKind.TAXI:
        amount = rng.randrange(1000, 8000)
    elif kind == TapKind.MERCHANT:
        amount = rng.randrange(100, 30000)
    elif kind == TapKind.PETROL:
        amount = rng.randrange(5000, 40000)
    elif kind == TapKind.MEDICAL:
        amount, bill_class = rng.randrange(1000, 50000), rng.randint(1, 3)
    elif kind == TapKind.LIBRARY:
        route = rng.choice((1, 2))
    now_ms = int(time.time() * 1000)
    return m.TapItem(seq=seq, card=card, time_ms=now_ms, kind=kind, route=route, amount_fen=amount,
                     bill_class=bill_class)


async def drive(spec: DriveSpec, progress: Callable[[int], None] | None = None) -> DriveResult:
    result = DriveResult()
    hist = HdrHistogram(1, 60_000_000, 3)  # microseconds
    cards = card_numbers(spec.n_cards)
    per_terminal = [spec.n_taps // len(spec.terminals)] * len(spec.terminals)
    for i in range(spec.n_taps % len(spec.terminals)):
        per_terminal[i] += 1
    deadline = time.monotonic() + spec.time_limit_s
    answers = _Answers(result, hist, progress)
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *[_run_terminal(spec, p, n, cards, deadline, answers) for p, n in zip(spec.terminals, per_terminal, strict=True)],
        return_exceptions=True,
    )
    result.elapsed_s = time.perf_counter() - started
    result.errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    if hist.get_total_count():
        result.latency_ms = {
            f"p{p:g}": hist.get_value_at_percentile(p) / 1000.0 for p in (50, 90, 99, 99.9)
        } | {"max": hist.get_max_value() / 1000.0, "mean": hist.get_mean_value() / 1000.0}
    return result


async def _run_terminal(spec: DriveSpec, plan: TerminalPlan, n_taps: int, cards: Sequence[int],
                        deadline: float, answers: "_Answers") -> None:
    """One terminal: up to ``spec.window`` batches in flight until its taps are sent."""
    rng = random.Random(spec.seed * 100_003 + plan.terminal_id)
    client = TerminalClient(plan.terminal_id, spec.master_key)
    await client.connect(spec.host, spec.port)
    window = asyncio.Semaphore(spec.window)
    pending: set[asyncio.Task[None]] = set()
    open_pairs: set[int] = set()
    seq = 0
    result = answers.result
    try:
        while n_taps > 0 and time.monotonic() < deadline:
            size = min(spec.batch_taps, n_taps)
            items = []
            for _ in range(size):
                seq += 1
                items.append(_item(rng, plan, seq, cards, spec.unknown_card_share, open_pairs))
            n_taps -= size
            result.taps_sent += size
            await window.acquire()
            task = asyncio.get_running_loop().create_task(
                answers.one(client, items, rng.random() < spec.retry_share, window))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        if n_taps > 0:
            result.timed_out = True
    finally:
        await client.close()


class _Answers:
    """Counts what the terminals are told, into one DriveResult and one histogram."""

    def __init__(self, result: DriveResult, hist: HdrHistogram, progress: Callable[[int], None] | None) -> None:
        self.result = result
        self.hist = hist
        self.progress = progress

    async def one(self, client: TerminalClient, items: list[m.TapItem], retry: bool,
                  window: asyncio.Semaphore) -> None:
        result = self.result
        try:
            sent = time.perf_counter()
            answer = await client.taps(items)
            self.hist.record_value(max(1, int((time.perf_counter() - sent) * 1e6)), len(items))
            first: dict[int, tuple[int, int]] = {}
            for r in answer.results:
                result.by_code[Result(r.code).name] += 1
                if r.replay:
                    continue
                result.first_answers += 1
                first[r.seq] = (r.code, r.fare_fen)
                if r.code == Result.OK:
                    result.charged_fen += r.fare_fen
            result.taps_answered += len(items)
            if self.progress is not None:
                self.progress(len(items))
            if retry:  # the same seqs again: must come back as replays, never charged twice
                again = await client.taps(items)
                result.replays_sent += len(items)
                for r in again.results:
                    if r.replay and first.get(r.seq) == (r.code, r.fare_fen):
                        result.replays_matched += 1
        finally:
            window.release()


def drive_in_process(spec: DriveSpec, counter: "object | None" = None) -> DriveResult:
    """Entry point for a child process: uvloop, then ``drive``; progress into a shared counter."""
    import uvloop

    def progress(n: int) -> None:
        if counter is not None:
            with counter.get_lock():  # type: ignore[attr-defined]
                counter.value += n  # type: ignore[attr-defined]

    return uvloop.run(drive(spec, progress))
