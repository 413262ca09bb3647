"""The region lab's suspension phase (docs/interop.md, 6.1): after the window closes, the
clearing house suspends the cities over their net debit cap; every other city learns it by
polling ``GET /suspended`` (interop/house_poll.py); with one suspended city's link down, its
cards' visitor taps elsewhere are refused stand-in (StandInCode.ISSUER_SUSPENDED, the terminal
hears ISSUER_NOT_ACCEPTED) and nothing is stood in; then the operator records each suspended
city's settlement and the desks see the suspension lifted."""

import asyncio
import time
from typing import Any

from ..domain.results import Result
from .cities import LabCity
from .clearing import LabClearing
from .traffic import TapRecord, visitor_taps

DESK_WAIT_S = 10.0  # a desk's poll is 200 ms apart in the lab: this is many polls
TAPS_PER_CITY = 3  # visitor taps of the suspended city's cards at each other city


def next_seqs(taps: list[TapRecord]) -> dict[tuple[str, int], int]:
    """Each validator's next unused seq after the traffic."""
    out: dict[tuple[str, int], int] = {}
    for t in taps:
        key = (t.acquirer, t.terminal_id)
        out[key] = max(out.get(key, 1), t.seq + 1)
    return out


async def wait_desks(cities: list[LabCity], want: dict[str, frozenset[str]]) -> tuple[bool, float]:
    """Until each city's desk holds ``want[code]`` (what its poller last got), bounded."""
    t = time.perf_counter()
    while time.perf_counter() - t < DESK_WAIT_S:
        if all(c.platform.region.desk.suspended == want[c.code] for c in cities):
            return True, time.perf_counter() - t
        await asyncio.sleep(0.05)
    return False, time.perf_counter() - t


def _desks(cities: list[LabCity]) -> dict[str, list[str]]:
    return {c.code: sorted(c.platform.region.desk.suspended) for c in cities}


async def _standins_of(cities: list[LabCity], issuer: str) -> int:
    n = 0
    for c in cities:
        n += int(await c.platform.pool.fetchval("SELECT count(*) FROM standin_taps WHERE issuer = $1", issuer))
    return n


async def suspended_phase(cities: list[LabCity], house: LabClearing, positions: dict[str, int],
                          taps: list[TapRecord], t0: float) -> dict[str, Any]:
    """The house's suspensions reach every desk; the biggest debtor's link goes down and its
    cards are tapped at every other city: each must be refused, none stood in."""
    suspended = frozenset(await house.suspended())
    out: dict[str, Any] = {"house": sorted(suspended), "positions_fen": positions}
    if not suspended:
        return out
    target = min(suspended, key=lambda c: (positions.get(c, 0), c))
    city = next(c for c in cities if c.code == target)
    others = [c for c in cities if c is not city]
    seen, wait_s = await wait_desks(cities, {c.code: suspended - {c.code} for c in cities})
    out.update(city=target, desks_saw_it=seen, desks_wait_s=round(wait_s, 3), desks=_desks(cities))
    before = await _standins_of(others, target)
    await city.platform.region.server.stop()
    try:
        seqs = next_seqs(taps)
        got: list[TapRecord] = []
        for c in others:
            got += await visitor_taps(c, city, seqs.get((c.code, c.terminals[0].terminal_id), 1), TAPS_PER_CITY, t0)
    finally:
        await city.platform.region.server.start()
    names = {int(r): r.name for r in Result}
    out.update(link_down_taps=len(got), codes=sorted({names.get(t.code, str(t.code)) for t in got}),
               refused=sum(1 for t in got if t.code == int(Result.ISSUER_NOT_ACCEPTED)),
               stood_in_meanwhile=await _standins_of(others, target) - before)
    return out


async def settle_all(cities: list[LabCity], house: LabClearing, windows: list[str]) -> dict[str, Any]:
    """The operator records every suspended city's payment of each window; the desks' polls
    then see no suspension left."""
    suspended = await house.suspended()
    answers = {}
    for code in suspended:
        for w in windows:
            status, body = await house.settled(code, w)
            answers[f"{code}/{w}"] = body.get("code", "OK") if isinstance(body, dict) and status != 200 else "OK"
    after = await house.suspended()
    lifted, wait_s = await wait_desks(cities, {c.code: frozenset() for c in cities})
    return {"settled": sorted(suspended), "answers": answers, "house_after": after, "desks_lifted": lifted,
            "desks_wait_s": round(wait_s, 3), "desks_after": _desks(cities)}


__all__ = ["next_seqs", "settle_all", "suspended_phase", "wait_desks"]
