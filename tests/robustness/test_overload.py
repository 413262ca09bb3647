"""Overload against the live gateway (issue 6, part 3): ~3x capacity gets BUSY, queues stay
bounded, accepted taps keep a bounded p99, memory stays flat, and every accepted tap (and no
BUSY one) is in the journal. With the backpressure mark on (issue 17), the same overload waits
in TCP instead: no BUSY, every tap decided, goodput held.

Capacity is made small and found cheaply: the gateway runs with tiny shard lanes (10 taps per
shard call, one call in flight, 200 queued taps per shard), and a closed-loop phase measures
how many taps a second it decides. Then an open-loop phase offers 3x that for a few seconds
from batches encoded ahead of time (so the load generator's own CPU does not cap the offered rate).
tests/e2e/test_tap_path.py checks one BUSY batch and its retry; this is sustained overload.
"""

import asyncio
import time
import urllib.request
from array import array
from typing import Any

import pytest

from citycard.protocols import messages as m
from tests.support.city import plain_cards
from tests.support.clock import now_ms
from tests.support.live import LiveCity, live_city, mib, rss_bytes
from tests.support.results import ROBUSTNESS_RESULTS
from tests.support.terminal import LoadConn

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("ray_cluster")]

QUEUE_MAX = 200
LANES = {"shard_queue_max_taps": QUEUE_MAX, "shard_queue_pause_taps": 0, "shard_inflight_calls": 1,
         "shard_batch_max_taps": 10}
PAUSE_TAPS = 50  # the backpressure city's mark: a batch past it still fits under QUEUE_MAX
PRESSED_S = 4.0  # its overload phase: the excess waits in TCP and must drain within until_answered
N_TERMINALS = 6
BATCH = 25
CALIBRATE_S = 4.0
OVERLOAD_S = 8.0
FACTOR = 3.0
MAX_TAPS = 400_000  # hard cap on taps offered in the overload phase


class Offer:
    """Batches for the terminals: each with its terminal's next req and seqs, cards in turn,
    encoded ahead of sending by the terminal's client connection."""

    def __init__(self, conns: list[LoadConn], cards: list[int]) -> None:
        self.conns = conns
        self.cards = cards
        self.seqs = [1] * len(conns)
        self.reqs = [1] * len(conns)
        self.k = 0

    def next(self, i: int) -> tuple[int, int, bytes]:
        """(req, first seq, frame) of terminal i's next batch."""
        req, first = self.reqs[i], self.seqs[i]
        items = [m.TapItem(seq=first + j, card=self.cards[(self.k + j) % len(self.cards)], time_ms=now_ms(),
                           kind=4, amount_fen=1) for j in range(BATCH)]
        self.reqs[i] += 1
        self.seqs[i] += BATCH
        self.k += BATCH
        return req, first, self.conns[i].batch(req, items)


def p99(values: array) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * 0.99))] if s else 0.0


def scrape_queue_gauges(port: int) -> list[float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
            if line.startswith("citycard_shard_queue_taps{")]


@pytest.fixture(scope="module")
def live(configured_services, ray_cluster):
    with live_city(configured_services, n_cards=800, n_terminals=N_TERMINALS, gateway=LANES) as city:
        yield city


@pytest.fixture(scope="module")
def live_pressed(configured_services, ray_cluster):
    with live_city(configured_services, n_cards=800, n_terminals=N_TERMINALS,
                   gateway={**LANES, "shard_queue_pause_taps": PAUSE_TAPS}) as city:
        yield city


async def until_answered(conns: list[LoadConn], tries: int) -> None:
    for _ in range(tries):  # bounded: 10 ms a try
        if not any(conn.sent for conn in conns):
            return
        await asyncio.sleep(0.01)


async def calibrate(offer: Offer, fig: dict[str, Any]) -> float:
    """Capacity, closed loop: each terminal keeps 4 batches outstanding; taps decided a second."""
    conns = offer.conns
    t0 = time.perf_counter()
    outstanding = 4
    while time.perf_counter() - t0 < CALIBRATE_S:
        for i, conn in enumerate(conns):
            while len(conn.sent) < outstanding:
                conn.send(*offer.next(i))
        await asyncio.sleep(0.002)
    await until_answered(conns, 1000)  # the last answers
    capacity = sum(len(conn.accepted) for conn in conns) / (time.perf_counter() - t0)
    fig["capacity_taps_per_s"] = round(capacity)
    fig["calibration_busy"] = sum(conn.busy for conn in conns)
    assert capacity > 100, fig
    return capacity


async def sample(live: LiveCity, stop: asyncio.Event, samples: dict[str, list[float]]) -> None:
    """RSS and the largest lane queue every 20 ms, the queue gauges every second, until ``stop``."""
    last_scrape = 0.0
    for _ in range(2000):  # bounded: ~ 2000 x 20 ms
        if stop.is_set():
            return
        samples["lanes"].append(max(await asyncio.to_thread(live.lane_queues)))
        samples["rss"].append(rss_bytes(collect=False))
        if time.perf_counter() - last_scrape > 1.0:
            last_scrape = time.perf_counter()
            samples["gauges"].extend(await asyncio.to_thread(scrape_queue_gauges, live.c.platform.metrics_port))
        await asyncio.sleep(0.02)


async def overload(live: LiveCity, offer: Offer, capacity: float, fig: dict[str, Any],
                   seconds: float = OVERLOAD_S) -> dict[str, Any]:
    """Open loop: FACTOR x capacity from batches encoded ahead (the generator's CPU does not cap
    it); the phase's figures in ``fig``, and what the checks need."""
    conns = offer.conns
    calib_accepted = [len(conn.accepted) for conn in conns]
    calib_busy = sum(conn.busy for conn in conns)
    rate = FACTOR * capacity
    n_batches = min(int(rate * seconds / BATCH), MAX_TAPS // BATCH)
    plan = [(b % len(conns), *offer.next(b % len(conns))) for b in range(n_batches)]
    rss_before = rss_bytes()
    samples: dict[str, list[float]] = {"rss": [rss_before], "lanes": [], "gauges": []}
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(sample(live, stop, samples))
    answered_before = sum(conn.answered for conn in conns)
    t0 = time.perf_counter()
    interval = BATCH / rate
    for b, (i, req, first, data) in enumerate(plan):
        delay = t0 + b * interval - time.perf_counter()
        if delay > 0.001:
            await asyncio.sleep(delay)
        conns[i].send(req, first, data)
    offer_s = time.perf_counter() - t0
    await until_answered(conns, 3000)  # bounded: 30 s for the answers
    busy_s = time.perf_counter() - t0
    stop.set()
    await task
    assert not any(conn.sent for conn in conns), "batches left unanswered"
    rss_after = rss_bytes()
    offered = n_batches * BATCH
    accepted = sum(len(conn.accepted) for conn in conns) - sum(calib_accepted)
    busy = sum(conn.busy for conn in conns) - calib_busy
    lat = array("d")
    for conn, n0 in zip(conns, calib_accepted, strict=True):
        lat.extend(conn.lat[n0:])
    fig.update({
        "offered_taps": offered, "offered_taps_per_s": round(offered / offer_s),
        "offered_x_capacity": round(offered / offer_s / capacity, 2),
        "accepted_taps_per_s": round(accepted / busy_s), "busy_share": round(busy / offered, 3),
        "accepted_p50_ms": round(sorted(lat)[len(lat) // 2] * 1000, 1) if lat else None,
        "accepted_p99_ms": round(p99(lat) * 1000, 1),
        "max_lane_queue": max(samples["lanes"] or [0]), "max_queue_gauge": max(samples["gauges"] or [0]),
        "rss_before_mib": mib(rss_before), "rss_peak_mib": mib(max(samples["rss"])),
        "rss_after_mib": mib(rss_after), "answered": sum(conn.answered for conn in conns) - answered_before,
    })
    return {"offered": offered, "accepted": accepted, "busy": busy, "busy_s": busy_s, "lat": lat,
            "rss_before": rss_before, "rss_peak": max(samples["rss"]), "rss_after": rss_after}


async def journal_is_accepted_then_close(live: LiveCity, conns: list[LoadConn]) -> None:
    """Durable: every accepted tap has exactly its journal row, and no BUSY tap has one."""
    for conn in conns:
        rows = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            live.journal(conn.terminal_id), live.loop))  # type: ignore[arg-type]
        assert set(rows) == set(conn.accepted), f"terminal {conn.terminal_id}: journal != accepted taps"
    for conn in conns:
        await conn.close()


def test_three_times_capacity_gets_busy_with_bounded_queues_latency_and_memory(live):
    c = live.c
    cards = plain_cards(c) or [row[0] for row in c.cards]
    conns = [LoadConn(t.terminal_id) for t in c.terminals]
    fig: dict[str, Any] = {"lanes": LANES, "batch": BATCH}

    async def go() -> None:
        for conn in conns:
            await conn.connect(c.port, c.settings.city.master_key)
        offer = Offer(conns, cards)
        capacity = await calibrate(offer, fig)
        o = await overload(live, offer, capacity, fig)
        offered, busy = o["offered"], o["busy"]
        assert all(not conn.other for conn in conns), [conn.other[:3] for conn in conns]
        assert fig["answered"] == offered, fig  # every tap answered, BUSY or decided
        assert fig["offered_x_capacity"] >= 2.0, fig  # the generator really overloaded it
        assert busy / offered >= 0.3, fig  # the excess is refused with BUSY ...
        assert o["accepted"] / o["busy_s"] >= 0.5 * capacity, fig  # ... and goodput does not collapse
        assert fig["max_lane_queue"] <= QUEUE_MAX and fig["max_queue_gauge"] <= QUEUE_MAX, fig
        assert p99(o["lat"]) < 2.0, fig
        assert o["rss_peak"] - o["rss_before"] < 128 * 2**20, fig
        assert o["rss_after"] - o["rss_before"] < 64 * 2**20, fig

        await journal_is_accepted_then_close(live, conns)

    asyncio.run(asyncio.wait_for(go(), 120))
    assert live.loop_errors == [], live.loop_errors[:5]
    fig["gateway_loop_max_lag_ms"] = round(live.max_lag_s * 1000, 1)
    ROBUSTNESS_RESULTS.record("overload", fig)


def scrape(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + " "))


def test_three_times_capacity_with_backpressure_waits_instead_of_busy(live_pressed):
    """The mark on: the gateway stops reading while a queue is past it, so the excess waits in
    the terminals' sockets. Nothing is refused, every tap is decided and journaled once, the
    queues stay under the mark plus a batch, and goodput holds near capacity."""
    live = live_pressed
    c = live.c
    cards = plain_cards(c) or [row[0] for row in c.cards]
    conns = [LoadConn(t.terminal_id) for t in c.terminals]
    fig: dict[str, Any] = {"lanes": {**LANES, "shard_queue_pause_taps": PAUSE_TAPS}, "batch": BATCH}

    async def go() -> None:
        for conn in conns:
            await conn.connect(c.port, c.settings.city.master_key)
        offer = Offer(conns, cards)
        capacity = await calibrate(offer, fig)
        episodes_before = await asyncio.to_thread(scrape, c.platform.metrics_port, "citycard_backpressure_episodes_total")
        o = await overload(live, offer, capacity, fig, seconds=PRESSED_S)
        fig["backpressure_episodes"] = await asyncio.to_thread(
            scrape, c.platform.metrics_port, "citycard_backpressure_episodes_total") - episodes_before
        assert all(not conn.other for conn in conns), [conn.other[:3] for conn in conns]
        assert fig["answered"] == o["offered"], fig  # every tap answered ...
        assert o["busy"] == 0 and fig["calibration_busy"] == 0, fig  # ... none BUSY: it waited
        assert fig["offered_x_capacity"] >= 2.0, fig
        assert fig["backpressure_episodes"] > 0, fig
        assert fig["max_lane_queue"] <= PAUSE_TAPS + BATCH and fig["max_queue_gauge"] <= PAUSE_TAPS + BATCH, fig
        assert o["accepted"] / o["busy_s"] >= 0.5 * capacity, fig  # goodput holds
        assert o["rss_after"] - o["rss_before"] < 64 * 2**20, fig
        await journal_is_accepted_then_close(live, conns)

    asyncio.run(asyncio.wait_for(go(), 120))
    assert live.loop_errors == [], live.loop_errors[:5]
    ROBUSTNESS_RESULTS.record("overload_backpressure", fig)
