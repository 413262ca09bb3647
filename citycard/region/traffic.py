"""The region lab's taps: each city's bus validators, over the real terminal TCP protocol,
tap its own cards and, at ``visitor_share``, cards of the other cities (routed to their
issuers over the link). Every loop is bounded by count and by time."""

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..domain.results import Result
from ..terminal.client import TerminalClient
from .cities import LabCity

TAP_TIMEOUT_S = 10.0  # a terminal waits this long for an answer, then counts a timeout
MAX_RESENDS = 5  # BUSY / RETRY: the same seq again, at most this often, 200 ms apart
RESEND_PAUSE_S = 0.2
_UNDECIDED = (int(Result.BUSY), int(Result.RETRY))


@dataclass(frozen=True, slots=True)
class TapRecord:
    acquirer: str
    issuer: str
    terminal_id: int
    seq: int
    card_no: int
    code: int  # -1: no answer in time
    fare_fen: int
    at_s: float  # sent, seconds since the run started
    latency_ms: float

    @property
    def cross(self) -> bool:
        return self.acquirer != self.issuer


@dataclass(frozen=True)
class TrafficPlan:
    duration_s: float
    taps_per_s: float  # per city, spread over its terminals
    visitor_share: float  # of each city's taps, cards of other cities
    max_taps_per_terminal: int
    seed: int = 7


def _pick(rng: random.Random, here: LabCity, others: list[LabCity], share: float) -> tuple[str, int]:
    if others and rng.random() < share:
        c = rng.choice(others)
        return c.code, rng.choice(c.cards)
    return here.code, rng.choice(here.cards)


async def _terminal(city: LabCity, others: list[LabCity], terminal_index: int, plan: TrafficPlan, t0: float,
                    out: list[TapRecord], errors: list[str]) -> None:
    term = city.terminals[terminal_index]
    rng = random.Random(plan.seed * 1_000_003 + city.spec.index * 1000 + terminal_index)
    interval_s = len(city.terminals) / plan.taps_per_s
    client = TerminalClient(term.terminal_id, city.settings.city.master_key)
    try:
        await asyncio.wait_for(client.connect("127.0.0.1", city.platform.gateway_port), TAP_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        errors.append(f"{city.code}/{term.terminal_id}: connect: {exc!r}")
        return
    end = t0 + plan.duration_s
    seq = 0
    try:
        await asyncio.sleep(rng.random() * interval_s)  # spread the terminals' phases
        while seq < plan.max_taps_per_terminal and time.perf_counter() < end:
            seq += 1
            issuer, card = _pick(rng, city, others, plan.visitor_share)
            sent = time.perf_counter()
            code, fare = -1, 0
            for _ in range(MAX_RESENDS):
                try:
                    r = await asyncio.wait_for(client.tap(seq, card, int(time.time() * 1000), term.kind,
                                                          term.route), TAP_TIMEOUT_S)
                except TimeoutError:
                    break
                code, fare = r.code, r.fare_fen
                if code not in _UNDECIDED:
                    break
                await asyncio.sleep(RESEND_PAUSE_S)
            done = time.perf_counter()
            out.append(TapRecord(city.code, issuer, term.terminal_id, seq, card, code, fare, sent - t0,
                                 (done - sent) * 1000.0))
            await asyncio.sleep(max(0.0, interval_s - (done - sent)))
    except (OSError, ConnectionError) as exc:
        errors.append(f"{city.code}/{term.terminal_id}: {exc!r}")
    finally:
        await client.close()


async def drive(cities: list[LabCity], plan: TrafficPlan, t0: float,
                events: list[tuple[float, Callable[[], object]]] | None = None) -> tuple[list[TapRecord], list[str]]:
    """Every city's terminals for ``plan.duration_s``; ``events`` (seconds after t0, an async
    callable) run on the way (the outage and its end)."""
    out: list[TapRecord] = []
    errors: list[str] = []
    tasks = [asyncio.create_task(_terminal(c, [o for o in cities if o is not c], i, plan, t0, out, errors))
             for c in cities for i in range(len(c.terminals))]

    async def run_events() -> None:
        for at_s, action in sorted(events or [], key=lambda e: e[0]):
            await asyncio.sleep(max(0.0, t0 + at_s - time.perf_counter()))
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - reported; the traffic goes on
                errors.append(f"event at {at_s:.1f} s: {exc!r}")

    ev = asyncio.create_task(run_events())
    bound_s = plan.duration_s + TAP_TIMEOUT_S * MAX_RESENDS + 30
    try:
        await asyncio.wait_for(asyncio.gather(*tasks, ev), bound_s)
    except TimeoutError:
        errors.append(f"traffic did not finish within {bound_s:.0f} s")
        for t in tasks + [ev]:
            t.cancel()
        await asyncio.gather(*tasks, ev, return_exceptions=True)
    return out, errors


__all__ = ["TapRecord", "TrafficPlan", "drive"]
