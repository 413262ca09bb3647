"""``citycard region lab``: N cities on one machine, their own and visitors' taps, one whole
city down in the middle and restarted, settlement windows closed, clearing files delivered to
a clearing house, a suspension over the net debit cap and its lifting, and an audit of it all
(docs/interop.md, "The region lab")."""

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..clearing import wire
from ..cli.services import Services, connect_app
from ..config.fare_table import load_fare_tables
from ..config.settings import Settings
from ..domain.clearing_records import SettlementReport
from ..domain.settlement import CLOSE_GRACE_MS
from ..persistence import settlement
from . import books_import, suspension
from . import cities as cities_mod
from . import offline as offline_mod
from .audit import Books, audit, check_next_window, check_suspension, check_unknown_card, read_books
from .audit_offline import check_offline_visitors, expected_chargebacks
from .cities import LabCity
from .clearing import (
    INTERCHANGE_BP,
    Delivery,
    LabClearing,
    acquirer_records,
    bad_deliveries,
    delivery,
    next_window,
    unknown_card_record,
    window_of,
)
from .summary import build_report
from .traffic import TapRecord, TrafficPlan, drive

log = logging.getLogger(__name__)
ADVICE_WAIT_S = 60.0  # after the traffic, stand-ins still pending get this long to be advised
UNKNOWN_CARD_NO = cities_mod.FIRST_PREFIX * 10**11 + 1  # prefix FIRST_PREFIX: no lab city issues it
VERDICT_REASON = "lab: the issuer refuses this record (the chargeback test)"


@dataclass(frozen=True)
class LabSpec:
    cities: int = 10
    cards: int = 2000
    terminals: int = 3
    account_shards: int = 1
    duration_s: float = 30.0
    taps_per_s: float = 15.0  # per city
    visitor_share: float = 0.2
    floor_limit_fen: int = 2000
    schema_prefix: str = "region_lab"
    down_city: int = 2  # 1-based; the whole city is down from outage_from to outage_until (fractions of the run)
    outage_from: float = 0.3
    outage_until: float = 0.6
    max_taps_per_terminal: int = 100_000
    net_debit_cap_fen: int = 0  # every city's cap at the house; 0: any net debtor is suspended at the close
    house_poll_ms: int = 200  # how often each city polls the house's GET /suspended
    offline_per_s: float = 3.0  # offline visitor records a second per city (region/offline.py); 0: none
    forged_share: float = 0.05  # of them, forged (a bad TAC): the issuers' verdicts

    def check(self) -> None:
        if not 2 <= self.cities <= cities_mod.MAX_CITIES:
            raise ValueError(f"--cities must be 2..{cities_mod.MAX_CITIES}")
        if not 100 <= self.cards <= 1_000_000 or not 1 <= self.terminals <= 100:
            raise ValueError("--cards must be 100..1000000 and --terminals 1..100")
        if not 1.0 <= self.duration_s <= 3600 or not 0.1 <= self.taps_per_s <= 5000:
            raise ValueError("--duration-s must be 1..3600 and --taps-per-s 0.1..5000")
        if not 0.0 <= self.visitor_share <= 1.0:
            raise ValueError("--visitor-share must be 0..1")
        if not 1 <= self.down_city <= self.cities or not 0 <= self.outage_from < self.outage_until <= 1:
            raise ValueError("--down-city must be one of the cities and 0 <= outage from < until <= 1")
        if not 0 <= self.net_debit_cap_fen <= 2**62 or not 100 <= self.house_poll_ms <= 60_000:
            raise ValueError("--net-debit-cap-fen must be 0..2^62 and the house poll 100..60000 ms")
        if not 0 <= self.offline_per_s <= 500 or not 0 <= self.forged_share <= 0.5:
            raise ValueError("--offline-per-s must be 0..500 and --forged-share 0..0.5")


Progress = Callable[[str], None]


async def _stop_city(city: LabCity, outage: dict[str, Any], t0: float) -> None:
    """The whole platform stops (gateway, shards, link server, desk), as an operator's stop
    would (its Ray actors killed, not left running)."""
    city.link_down = True
    t = time.perf_counter()
    await cities_mod.stop_city(city)
    outage["down_at_s"], outage["stop_s"] = round(t - t0, 3), round(time.perf_counter() - t, 3)


async def _restart_city(city: LabCity, outage: dict[str, Any], t0: float, services: Services) -> None:
    """A new platform on the same schema and ports: it recovers from Postgres."""
    t = time.perf_counter()
    await cities_mod.restart_city(city, services)
    city.link_down = False
    outage["up_at_s"], outage["restart_s"] = round(time.perf_counter() - t0, 3), round(time.perf_counter() - t, 3)
    outage["gateway_port"], outage["link_port"] = city.platform.gateway_port, city.platform.link_port


async def _pending_standins(cities: list[LabCity]) -> int:
    n = 0
    for c in cities:
        n += int(await c.platform.pool.fetchval("SELECT count(*) FROM standin_taps WHERE state = 'pending'"))
    return n


async def _wait_advised(cities: list[LabCity]) -> tuple[int, float]:
    t = time.perf_counter()
    pending = await _pending_standins(cities)
    while pending and time.perf_counter() - t < ADVICE_WAIT_S:
        await asyncio.sleep(0.5)
        pending = await _pending_standins(cities)
    return pending, time.perf_counter() - t


async def _close_windows(cities: list[LabCity], window: str, start_ms: int, end_ms: int) -> dict[str, Any]:
    """Each city's own settlement window. The traffic has stopped and every answer was durable
    before it was given, so the close grace (taps still in a group commit) has nothing to wait
    for: the lab closes as if the grace had passed."""
    out = {}
    for c in cities:
        tables = load_fare_tables(c.settings.fare_table_path())
        conn = await connect_app(c.settings, c.platform.services)
        try:
            closing = await settlement.close_window(conn, tables, window, start_ms, end_ms,
                                                    max(int(time.time() * 1000), end_ms + CLOSE_GRACE_MS), 0)
        finally:
            await conn.close()
        out[c.code] = {"code": closing.code.name, "state": closing.state, "lines": len(closing.lines),
                       "gross_fen": sum(ln.gross_fen for ln in closing.lines),
                       "commission_fen": sum(ln.commission_fen for ln in closing.lines),
                       "discrepancies": dict(Counter(d.what for d in closing.discrepancies))}
    return out


async def _snapshot(house: LabClearing, codes: list[str], window: str) -> dict[str, Any]:
    got = await house.statements(codes, window)
    return {c: (dataclasses.asdict(s) if s is not None else None) for c, s in got.items()}


async def _refused(house: LabClearing, codes: list[str], what: str, d: Delivery, expected: str) -> dict[str, Any]:
    before = await _snapshot(house, codes, d.window)
    a = await house.deliver(d)
    return {"what": what, "sender": d.sender, "refused": a.code != "OK", "code": a.code, "http_status": a.status,
            "expected": expected, "reason": a.reason,
            "changed_nothing": before == await _snapshot(house, codes, d.window)}


async def _clear(cities: list[LabCity], house: LabClearing, window: str,
                 now_ms: int) -> tuple[dict[str, Any], int, list[Any]]:
    """Deliver every city's file over HTTP; try the bad ones on the last city that has records;
    one other city's delivery carries a record for a card no issuer has (rejected inside)."""
    codes = [c.code for c in cities]
    deliveries, records = {}, {}
    prefixes = {c.spec.prefix: c.code for c in cities}
    for c in cities:
        async with c.platform.pool.acquire() as conn:
            records[c.code] = await acquirer_records(conn, c.code, window)
            records[c.code] += await offline_mod.acquirer_offline(conn, c, window, prefixes)  # offline visitors
    probe = next((c for c in reversed(cities) if records[c.code]), cities[-1])
    carrier = next(c for c in cities if c is not probe)
    issuer = next(c for c in cities if c is not carrier)
    unknown = unknown_card_record(carrier.code, window, issuer.code, UNKNOWN_CARD_NO, now_ms)
    for c in cities:
        extra = [unknown] if c is carrier else []
        deliveries[c.code] = delivery(c.spec.key, c.code, window, records[c.code] + extra)
    answers, cleared, refusals = {}, 0, []
    unknown_card: dict[str, Any] = {}
    for c in cities:
        if c is probe:
            continue
        a = await house.deliver(deliveries[c.code])
        answers[c.code] = dataclasses.asdict(a)
        cleared += a.cleared
        if c is carrier:
            unknown_card = {"sender": c.code, "record_id": unknown.record_id, "card_no": unknown.card_no,
                            "delivery_code": a.code, "accepted": a.cleared, "own_records": len(records[c.code]),
                            "rejected": list(a.rejections)}
    bad = bad_deliveries(deliveries[probe.code], probe.spec.key, Ed25519PrivateKey.generate()) \
        if records[probe.code] else []
    expected = {"wrong sum": "BAD_MANIFEST", "forged signature": "BAD_SIGNATURE"}
    for what, d in bad:
        refusals.append(await _refused(house, codes, what, d, expected[what]))
    a = await house.deliver(deliveries[probe.code])
    answers[probe.code] = dataclasses.asdict(a)
    cleared += a.cleared
    dup = deliveries[cities[0].code] if cities[0] is not probe else deliveries[probe.code]
    refusals.append(await _refused(house, codes, "duplicate delivery", dup, "DUPLICATE_FILE"))
    return {"house_url": house.url, "deliveries": answers, "records": {k: len(v) for k, v in records.items()},
            "unknown_card": unknown_card, "records_by_city": records}, cleared, refusals


async def _verdict_then_next_window(cities: list[LabCity], house: LabClearing,
                                    window: str) -> tuple[dict[str, Any], SettlementReport | None]:
    """The first issuer with records cleared against its cards fetches them (signed), rejects
    the first with a signed verdict, and tries again (refused: once per record); the next day's
    window, empty, is closed: the chargeback must be in it."""
    out: dict[str, Any] = {"window": next_window(window)}
    for c in cities:
        recs = [r for r in await house.records(c.spec.key, c.code, window) if r.kind == "online"]  # offline: verify's
        if recs:
            r = recs[0]
            status, body = await house.verdict(c.spec.key, c.code, r.record_id, VERDICT_REASON)
            again, body2 = await house.verdict(c.spec.key, c.code, r.record_id, VERDICT_REASON)
            out.update(issuer=c.code, acquirer=r.acquirer, record_id=r.record_id, amount_fen=r.amount_fen,
                       reason=VERDICT_REASON, status=status, code=body.get("code"), again_status=again,
                       again_code=body2.get("code"))
            break
    return out, await house.close(out["window"])


async def _books(cities: list[LabCity], records: dict[str, Any]) -> dict[str, Books]:
    out = {}
    for c in cities:
        balances: dict[int, int] = {}
        for part in await asyncio.gather(*[a.balances.remote() for a in c.platform.shards]):
            balances.update(part)
        async with c.platform.pool.acquire() as conn:
            out[c.code] = await read_books(conn, c.code, records[c.code], balances)
    return out


async def _start_cities(base: Settings, services: Services, spec: LabSpec, specs: list[cities_mod.CitySpec],
                        house_url: str, key_dir: Path, started: list[LabCity], progress: Progress) -> None:
    issuers = cities_mod.registry(specs, spec.floor_limit_fen)
    for s in specs:
        settings = cities_mod.city_settings(base, s, issuers, key_dir, spec.account_shards, house_url,
                                            spec.house_poll_ms)
        started.append(await cities_mod.start_city(settings, services, s, spec.cards, spec.terminals))
        progress(f"{s.code} up (schema {s.schema}, gateway :{started[-1].platform.gateway_port},"
                 f" link :{s.link_port})")


async def _traffic_with_outage(started: list[LabCity], spec: LabSpec, services: Services,
                               progress: Progress) -> tuple[list[TapRecord], list[str], dict[str, Any], float, float,
                                                            Any]:
    """The traffic (and the offline visitors beside it), the down city stopped whole and
    restarted in the middle of it; then the stand-ins for its cards advised. (taps, errors,
    outage figures, t0, traffic seconds, the offline run)"""
    down = started[spec.down_city - 1]
    outage: dict[str, Any] = {"city": down.code, "what": "the whole platform (gateway, shards, link, desk)"}
    plan = TrafficPlan(spec.duration_s, spec.taps_per_s, spec.visitor_share, spec.max_taps_per_terminal)
    t0 = time.perf_counter()
    progress(f"traffic for {spec.duration_s:g} s; {down.code} down whole from"
             f" {spec.outage_from * spec.duration_s:.1f} s, restarted at {spec.outage_until * spec.duration_s:.1f} s")
    events: list[tuple[float, Callable[[], object]]] = [
        (spec.outage_from * spec.duration_s, lambda: _stop_city(down, outage, t0)),
        (spec.outage_until * spec.duration_s, lambda: _restart_city(down, outage, t0, services))]
    offline_task = asyncio.create_task(offline_mod.drive_offline(  # offline visitors, beside the taps
        started, offline_mod.OfflinePlan(spec.offline_per_s, spec.forged_share, spec.duration_s), t0))
    taps, errors, views = await drive(started, plan, t0, events)
    offline_run = await offline_task
    traffic_s = time.perf_counter() - t0
    if down.link_down:  # the traffic ended early: bring the city back before the advice
        await _restart_city(down, outage, t0, services)
    pending, advice_s = await _wait_advised(started)
    outage["pending_after_wait"], outage["advice_wait_s"] = pending, round(advice_s, 2)
    outage["standins_for_down_city"] = 0
    for c in started:
        outage["standins_for_down_city"] += int(await c.platform.pool.fetchval(
            "SELECT count(*) FROM standin_taps WHERE issuer = $1", down.code))
    outage["its_terminals_saw"] = views[down.code].as_dict()
    outage["its_taps_while_down"] = _taps_in(taps, down.code, outage)
    return taps, errors, outage, t0, traffic_s, offline_run


def _taps_in(taps: list[TapRecord], acquirer: str, outage: dict[str, Any]) -> dict[str, int]:
    """The down city's own taps sent while it was down (answered after the restart)."""
    lo, hi = outage.get("down_at_s", 0.0), outage.get("up_at_s", 0.0)
    mine = [t for t in taps if t.acquirer == acquirer and lo <= t.at_s < hi]
    return {"sent": len(mine), "answered_ok": sum(1 for t in mine if t.code == 0),
            "unanswered": sum(1 for t in mine if t.code < 0)}


async def _clear_and_suspend(started: list[LabCity], house: LabClearing, taps: list[TapRecord], t0: float,
                             start_ms: int, progress: Progress) -> dict[str, Any]:
    """Close each city's window, clear at the house, close the house's window (suspending the
    cities over their cap), the suspension phase, the chargeback's next window, settlement."""
    end_ms = int(time.time() * 1000)
    window = window_of(end_ms)
    progress(f"closing settlement windows {window}; clearing")
    windows = await _close_windows(started, window, start_ms - 1000, end_ms)
    clearing, cleared, refusals = await _clear(started, house, window, end_ms)
    report = await house.close(window)
    statements = dict(await house.statements([c.code for c in started], window))
    verified = await offline_mod.verify_all(started, house.url, window, house)  # issuers: clearing verify
    progress("suspension phase")
    clearing["suspension"] = await suspension.suspended_phase(
        started, house, dict(report.multilateral) if report else {}, taps, t0)
    chargeback, report2 = await _verdict_then_next_window(started, house, window)
    clearing["suspension"]["lifted"] = await suspension.settle_all(started, house, [window, next_window(window)])
    clearing["chargeback"] = chargeback
    clearing["next_window"] = wire.report_json(report2) if report2 is not None else None
    return {"window": window, "windows": windows, "clearing": clearing, "cleared": cleared, "refusals": refusals,
            "report": report,
            "statements": statements, "chargeback": chargeback, "report2": report2, "verified": verified}


async def run_lab(base: Settings, services: Services, spec: LabSpec, key_dir: Path,
                  progress: Progress = lambda _m: None) -> dict[str, Any]:
    spec.check()
    specs = cities_mod.plan_specs(spec.cities, spec.schema_prefix)
    started: list[LabCity] = []
    t_start = time.perf_counter()
    house = await LabClearing.start(services.db_url, f"{spec.schema_prefix}_house", specs, spec.net_debit_cap_fen)
    try:
        await _start_cities(base, services, spec, specs, house.url, key_dir, started, progress)
        await offline_mod.prepare(started)  # offline visitors: each city's validators
        startup_s = time.perf_counter() - t_start
        start_ms = int(time.time() * 1000)
        taps, errors, outage, t0, traffic_s, offline_run = await _traffic_with_outage(started, spec, services,
                                                                                     progress)
        c = await _clear_and_suspend(started, house, taps, t0, start_ms, progress)
        clearing, report, verified = c["clearing"], c["report"], c["verified"]
        files = clearing.pop("records_by_city")
        books = await _books(started, files)
        booked_windows = [c["window"], next_window(c["window"])]  # each city books the house's results
        booked = await books_import.import_all(started, house.url, files, booked_windows)
        statements_by_window = {c["window"]: c["statements"], booked_windows[1]: dict(
            await house.statements([x.code for x in started], booked_windows[1]))}
        clearing["booked"] = books_import.as_dict(booked)
        for city in started:  # each issuer owes for its cards' offline sales the house handed it
            books[city.code].offline_payable = (len(verified[city.code]["records"]),
                                                sum(r[2] for r in verified[city.code]["records"]))
        verdict = audit(taps, books, report, c["statements"], c["refusals"], outage, c["cleared"], INTERCHANGE_BP)
        check_next_window(verdict, report, c["report2"], c["chargeback"], INTERCHANGE_BP,
                          also=expected_chargebacks(offline_run.uploads))
        if spec.offline_per_s > 0:
            check_offline_visitors(verdict, offline_run.uploads, files, verified, c["report2"], spec.forged_share > 0)
        check_unknown_card(verdict, clearing["unknown_card"])
        books_import.check_imported(verdict, booked, statements_by_window, [report, c["report2"]])
        check_suspension(verdict, clearing["suspension"], [x.code for x in started])
        return build_report(spec=dataclasses.asdict(spec), startup_s=startup_s, traffic_s=traffic_s, taps=taps,
                            errors=errors, outage=outage, windows=c["windows"], clearing=clearing,
                            refusals=c["refusals"], report=report, books=books, verdict=verdict,
                            total_s=time.perf_counter() - t_start,
                            offline=offline_mod.figures(offline_run, verified))
    finally:
        await _stop_all(started)
        await house.stop()


async def _stop_all(started: list[LabCity]) -> None:
    # every city stopping takes every link down: expected here, not worth a warning each
    links_log = logging.getLogger("citycard.interop.client")
    level = links_log.level
    links_log.setLevel(logging.ERROR)
    try:
        for c in reversed(started):
            try:
                await c.platform.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others all the same
                log.warning("stopping %s: %r", c.code, exc)
    finally:
        links_log.setLevel(level)


__all__ = ["LabSpec", "run_lab"]
