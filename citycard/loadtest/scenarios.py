"""The load lab's scenarios: the phase each one runs (rate profile, tap mix, bounds) and the
hotlist storm, loss reports sent over the card-services API while the load runs."""

from __future__ import annotations

import asyncio
import math
import random
import time
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import CityCardError
from .city import MEGACITY_CARDS, CityModel
from .lab import Phase
from .schedule import DayCurve, Ramp, RateProfile, Spike, Steady, expected_count
from .tapmix import TapMix

SCENARIOS = ("steady", "ramp", "spike", "soak", "hot-card", "hotlist-storm", "regional")
# Planned taps per home card above which the cards' opening money (a 5-200 yuan e-purse, half
# with a general purse; about 10 yuan a tap in the lab's mix) runs out for many cards and the
# run measures INSUFFICIENT_FUNDS refusals: at 15 a card, 12 % of the taps were. A megacity's
# day is 2 a card (4 % refused: the poorest cards).
TAPS_PER_CARD_MAX = 10


@dataclass
class Storm:
    """Loss reports through the card-services API while the load runs."""

    per_s: float
    count: int
    start_s: float
    reported: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)



def scenario_phase(args: Namespace, model: CityModel, hot_card: int) -> tuple[Phase, Storm | None]:
    """The phase a scenario (or ``--day``) runs, and its hotlist storm if it has one."""
    rate, duration_s = float(args.rate), float(args.duration)
    storm = None
    mix = TapMix()
    name = args.scenario
    profile: RateProfile
    if args.day:
        name = "day"
        duration_s = float(args.day_seconds)
        profile = DayCurve.for_total_taps(model.taps_per_day, duration_s * 1000.0)
    elif name in ("steady", "soak", "hot-card", "hotlist-storm", "regional"):
        profile = Steady(rate)
    elif name == "ramp":  # rush hour: a tenth of the rate to all of it over 60 % of the run
        profile = Ramp(rate / 10.0, rate, duration_s * 600.0)
    elif name == "spike":  # a quarter of the rate, and 4x that for a sixth of the run
        profile = Spike(rate / 4.0, 4.0, duration_s * 1000.0 / 3.0, duration_s * 1000.0 / 6.0)
    else:
        raise CityCardError(f"unknown scenario {name!r}: one of {', '.join(SCENARIOS)}")
    if name == "hot-card":
        mix = TapMix(hot_card=hot_card, hot_share=args.hot_share)
    elif name == "regional":
        mix = TapMix(visitor_share=args.visitor_share)
    elif name == "hotlist-storm":
        storm = Storm(per_s=args.storm_rate, count=max(1, int(args.storm_rate * duration_s / 2)),
                      start_s=duration_s / 4)
    max_taps = args.max_taps or int(rate * duration_s * 1.5) + 1000
    if args.day:
        max_taps = args.max_taps or int(model.taps_per_day * 1.2) + 1000
    return Phase(name, profile, duration_s, max_taps, mix, senders=args.senders, linger_ms=args.linger_ms,
                 max_batch=args.batch, timeout_ms=args.timeout_ms, replay_share=args.replay_share,
                 seed=args.seed), storm


def money_warning(phase: Phase, home_cards: int) -> str | None:
    """A warning when the run plans so many taps a card that the cards run dry and the run
    measures refusals, not payments; None otherwise. Says the smallest city scale that fits."""
    planned = min(expected_count(phase.profile, 0.0, phase.duration_s * 1000.0), float(phase.max_taps))
    per_card = planned / max(1, home_cards)
    if per_card <= TAPS_PER_CARD_MAX:
        return None
    scale = _round_up(planned / TAPS_PER_CARD_MAX / MEGACITY_CARDS)
    return (f"{planned:,.0f} taps planned over {home_cards:,} home cards is {per_card:,.0f} a card: their opening "
            f"money runs out and later taps are refused INSUFFICIENT_FUNDS; for payments all the way, use a city "
            f"of scale {scale:g} or more (--scale; for --target, `citycard city seed --scale`)")


def _round_up(x: float) -> float:
    """The next of 1, 2, 5 times a power of ten at or above ``x``."""
    step = 10.0 ** math.floor(math.log10(x))
    return next(m * step for m in (1, 2, 5, 10) if m * step >= x * (1 - 1e-9))


def describe(phase: Phase) -> str:
    p = phase.profile
    if isinstance(p, Steady):
        return f"steady {p.target_per_s:,.0f}/s for {phase.duration_s:g} s"
    if isinstance(p, Ramp):
        return f"ramp {p.from_rate_per_s:,.0f} -> {p.to_rate_per_s:,.0f}/s over {p.ramp_ms / 1000:g} s"
    if isinstance(p, Spike):
        return (f"spike {p.base_rate_per_s:,.0f}/s x{p.multiplier:g} at {p.start_ms / 1000:g} s "
                f"for {p.duration_ms / 1000:g} s")
    if isinstance(p, DayCurve):
        return f"a city day ({expected_day(p):,.0f} taps) in {p.day_ms / 1000:g} s"
    return repr(p)


def expected_day(curve: DayCurve) -> float:
    return expected_count(curve, 0.0, curve.day_ms)



# -- the hotlist storm -------------------------------------------------------------------
async def run_storm(storm: Storm, api_url: str, api_token: str, cards: Sequence[int], origin_unix_s: float,
                    seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    victims = rng.sample(cards, min(storm.count, len(cards)))
    gate = asyncio.Semaphore(16)
    headers = {"Authorization": f"Bearer {api_token}"}
    await asyncio.sleep(max(0.0, origin_unix_s + storm.start_s - time.time()))
    started = time.monotonic()

    async def report(client: httpx.AsyncClient, card_no: int) -> None:
        async with gate:
            try:
                r = await client.post(f"/cards/{card_no}/loss", json={"reason": "load lab: hotlist storm"})
                if r.status_code == 200:
                    storm.reported += 1
                else:
                    storm.failed += 1
                    if len(storm.errors) < 20:
                        storm.errors.append(f"{card_no}: HTTP {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                storm.failed += 1
                if len(storm.errors) < 20:
                    storm.errors.append(f"{card_no}: {exc!r}")

    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30.0) as client:
        tasks = []
        for k, card_no in enumerate(victims):
            await asyncio.sleep(max(0.0, started + k / storm.per_s - time.monotonic()))
            tasks.append(asyncio.get_running_loop().create_task(report(client, card_no)))
        await asyncio.gather(*tasks)
