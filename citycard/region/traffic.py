"""The region lab's taps: each city's bus validators, over the real terminal TCP protocol,
tap its own cards and, at ``visitor_share``, cards of the other cities (routed to their
issuers over the link). Every loop is bounded by count and by time."""

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..domain.results import Result
from ..errors import CityCardError
from ..terminal.client import TerminalClient
from .cities import LabCity

TAP_TIMEOUT_S = 10.0  # a terminal waits this long for an answer, then counts a timeout
MAX_RESENDS = 5  # BUSY / RETRY: the same seq again, at most this often, 200 ms apart
RESEND_PAUSE_S = 0.2
_UNDECIDED = (int(Result.BUSY), int(Result.RETRY))
CONNECT_TIMEOUT_S = 2.0
BACKOFF_MIN_S = 0.1  # a validator whose gateway refuses it tries again after 100 ms, doubling ...
BACKOFF_MAX_S = 1.0  # ... to 1 s
MAX_DROPS = 20  # connections lost under one tap before the terminal counts it unanswered
HOLD_AFTER_END_S = 30.0  # a tap held for a platform that is down is given up this long after the run


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
    held: bool = False  # waited for its own platform to come back (the outage): not a latency sample

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
    first_seq: int = 0  # a later run on the same platforms goes on above the seqs already used


def _pick(rng: random.Random, here: LabCity, others: list[LabCity], share: float) -> tuple[str, int]:
    if others and rng.random() < share:
        c = rng.choice(others)
        return c.code, rng.choice(c.cards)
    return here.code, rng.choice(here.cards)


@dataclass
class TerminalView:
    """What one city's terminals saw of their own platform going away (the whole-city outage)."""

    refused_connects: int = 0  # connection attempts refused (or timed out) while it was down
    lost_connections: int = 0  # connections that dropped under them
    resent_same_seq: int = 0  # a tap unanswered when its connection dropped, sent again with its seq
    sent_late: int = 0  # taps held while the platform was down, answered after it came back
    replayed: int = 0  # of those resent, answered as a replay: decided before the stop, not charged again
    not_sent: int = 0  # the passengers' taps that never happened: the validator was waiting to connect
    reconnected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class _Conn:
    """One validator's connection to its gateway: reconnected with a bounded backoff (same
    host and port: the restarted platform keeps its gateway port)."""

    def __init__(self, city: LabCity, terminal_id: int, view: TerminalView) -> None:
        self.city, self.terminal_id, self.view = city, terminal_id, view
        self.client: TerminalClient | None = None
        self._ever = False

    async def get(self, give_up_at: float) -> TerminalClient | None:
        backoff_s = BACKOFF_MIN_S
        while self.client is None:
            c = TerminalClient(self.terminal_id, self.city.settings.city.master_key)
            try:
                await asyncio.wait_for(c.connect("127.0.0.1", self.city.platform.gateway_port), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, CityCardError):
                await c.close()
                self.view.refused_connects += 1
                if time.perf_counter() + backoff_s > give_up_at:
                    return None
                await asyncio.sleep(backoff_s)
                backoff_s = min(BACKOFF_MAX_S, backoff_s * 2)
                continue
            self.view.reconnected += self._ever
            self._ever = True
            self.client = c
        return self.client

    async def drop(self) -> None:
        if self.client is not None:
            self.view.lost_connections += 1
            await self.client.close()
            self.client = None

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


async def _one_tap(conn: _Conn, seq: int, card: int, time_ms: int, kind: int, route: int,
                   give_up_at: float) -> tuple[int, int, bool]:
    """(code, fare, held): the tap sent until decided (BUSY / RETRY resent at most MAX_RESENDS
    times), across reconnections with the same seq; -1: no answer. ``held``: it waited for a
    connection."""
    code, fare, held = -1, 0, False
    resends = drops = 0
    while resends < MAX_RESENDS and drops <= MAX_DROPS:
        client = await conn.get(give_up_at)
        if client is None:
            return -2, 0, True  # never sent: the platform did not come back in time
        try:
            r = await asyncio.wait_for(client.tap(seq, card, time_ms, kind, route), TAP_TIMEOUT_S)
        except TimeoutError:
            return -1, 0, held
        except (OSError, ConnectionError, CityCardError):  # closed under it (a fatal error too): same seq again
            drops += 1
            await conn.drop()
            conn.view.resent_same_seq += 1
            held = True
            continue
        code, fare = r.code, r.fare_fen
        conn.view.replayed += held and r.replay
        if code not in _UNDECIDED:
            break
        resends += 1
        await asyncio.sleep(RESEND_PAUSE_S)
    return code, fare, held


async def _terminal(city: LabCity, others: list[LabCity], terminal_index: int, plan: TrafficPlan, t0: float,
                    out: list[TapRecord], errors: list[str], view: TerminalView) -> None:
    term = city.terminals[terminal_index]
    rng = random.Random(plan.seed * 1_000_003 + city.spec.index * 1000 + terminal_index)
    interval_s = len(city.terminals) / plan.taps_per_s
    end = t0 + plan.duration_s
    conn = _Conn(city, term.terminal_id, view)
    seq = plan.first_seq
    try:
        if await conn.get(end) is None:
            errors.append(f"{city.code}/{term.terminal_id}: could not connect")
            return
        await asyncio.sleep(rng.random() * interval_s)  # spread the terminals' phases
        while seq - plan.first_seq < plan.max_taps_per_terminal and time.perf_counter() < end:
            seq += 1
            issuer, card = _pick(rng, city, others, plan.visitor_share)
            sent = time.perf_counter()
            code, fare, held = await _one_tap(conn, seq, card, int(time.time() * 1000), term.kind, term.route,
                                              end + HOLD_AFTER_END_S)
            done = time.perf_counter()
            if code == -2:
                view.not_sent += 1
                break
            if held:
                view.sent_late += 1
                view.not_sent += int((done - sent) / interval_s)  # the slots it spent waiting
            out.append(TapRecord(city.code, issuer, term.terminal_id, seq, card, code, fare, sent - t0,
                                 (done - sent) * 1000.0, held))
            await asyncio.sleep(max(0.0, interval_s - (done - sent)))
    except (OSError, ConnectionError) as exc:
        errors.append(f"{city.code}/{term.terminal_id}: {exc!r}")
    finally:
        await conn.close()


async def drive(cities: list[LabCity], plan: TrafficPlan, t0: float,
                events: list[tuple[float, Callable[[], object]]] | None = None
                ) -> tuple[list[TapRecord], list[str], dict[str, TerminalView]]:
    """Every city's terminals for ``plan.duration_s``; ``events`` (seconds after t0, an async
    callable) run on the way (the outage and its end)."""
    out: list[TapRecord] = []
    errors: list[str] = []
    views = {c.code: TerminalView() for c in cities}
    tasks = [asyncio.create_task(_terminal(c, [o for o in cities if o is not c], i, plan, t0, out, errors,
                                           views[c.code]))
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
    bound_s = plan.duration_s + HOLD_AFTER_END_S + TAP_TIMEOUT_S * MAX_RESENDS + 30
    try:
        await asyncio.wait_for(asyncio.gather(*tasks, ev), bound_s)
    except TimeoutError:
        errors.append(f"traffic did not finish within {bound_s:.0f} s")
        for t in tasks + [ev]:
            t.cancel()
        await asyncio.gather(*tasks, ev, return_exceptions=True)
    return out, errors, views


async def visitor_taps(acquirer: LabCity, issuer: LabCity, first_seq: int, n: int, t0: float) -> list[TapRecord]:
    """``n`` taps of ``issuer``'s cards at ``acquirer``'s first validator, seqs from ``first_seq``
    on (above any it sent before), each decided or unanswered; no resends of BUSY."""
    term = acquirer.terminals[0]
    conn = _Conn(acquirer, term.terminal_id, TerminalView())
    out = []
    try:
        for i in range(n):
            card = issuer.cards[i % len(issuer.cards)]
            sent = time.perf_counter()
            code, fare, _ = await _one_tap(conn, first_seq + i, card, int(time.time() * 1000), term.kind, term.route,
                                           sent + TAP_TIMEOUT_S)
            out.append(TapRecord(acquirer.code, issuer.code, term.terminal_id, first_seq + i, card, code, fare,
                                 sent - t0, (time.perf_counter() - sent) * 1000.0))
    finally:
        await conn.close()
    return out


__all__ = ["TapRecord", "TerminalView", "TrafficPlan", "drive", "visitor_taps"]
