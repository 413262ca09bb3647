"""The region lab's report dict (JSON-able): run, totals, latency, timeline, flows, the net
position matrix, the outage, the refusals and the audit."""

import math
from collections import Counter
from typing import Any

from ..domain.clearing_records import SettlementReport
from ..domain.results import Result
from .audit import Books, Verdict
from .traffic import TapRecord

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0))


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list (0.0 when empty)."""
    if not sorted_ms:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def latency(records: list[TapRecord]) -> dict[str, float]:
    ms = sorted(t.latency_ms for t in records if t.code >= 0 and not t.held)
    out = {k: round(percentile(ms, p), 3) for k, p in PERCENTILES}
    out["count"] = len(ms)
    return out


def timeline(taps: list[TapRecord]) -> list[dict[str, Any]]:
    """Per second of the run: cross-city taps, their p99 latency, and how many were answered OK."""
    by_s: dict[int, list[TapRecord]] = {}
    for t in taps:
        if t.cross:
            by_s.setdefault(int(t.at_s), []).append(t)
    return [{"t_s": s, "cross_taps": len(ts), "cross_p99_ms": round(percentile(sorted(
        x.latency_ms for x in ts if x.code >= 0 and not x.held), 99.0), 3), "cross_ok": sum(1 for x in ts if x.code == 0)}
        for s, ts in sorted(by_s.items())]


def _codes(taps: list[TapRecord]) -> dict[str, int]:
    names = {int(r): r.name for r in Result}
    return {names.get(c, "NO_ANSWER" if c < 0 else str(c)): n for c, n in Counter(t.code for t in taps).most_common()}


def build_report(*, spec: dict[str, Any], startup_s: float, traffic_s: float, taps: list[TapRecord],
                 errors: list[str], outage: dict[str, Any], windows: dict[str, Any], clearing: dict[str, Any],
                 refusals: list[dict[str, Any]], report: SettlementReport | None, books: dict[str, Books],
                 verdict: Verdict, total_s: float, offline: dict[str, Any] | None = None) -> dict[str, Any]:
    cross = [t for t in taps if t.cross]
    flows = {c: verdict.figures.get("books", {}).get(c, {}).get("own_books", {}) for c in books}
    matrix = [{"payer": a, "payee": b, "fen": fen} for (a, b), fen in sorted((report.bilateral if report else {}).items())]
    standins = Counter((b.code, s[1]) for b in books.values() for s in b.standins.values())
    return {
        "run": {**spec, "startup_s": round(startup_s, 2), "traffic_s": round(traffic_s, 2),
                "total_s": round(total_s, 2)},
        "offline_visitors": offline or {},  # region/offline.py: records sold, forged, verdicts
        "ok": verdict.ok,
        "totals": {
            "taps": len(taps), "taps_per_s": round(len(taps) / traffic_s, 1) if traffic_s else 0.0,
            "cross_city_taps": len(cross), "cross_city_ok": sum(1 for t in cross if t.code == 0),
            "cross_city_charged_fen": sum(t.fare_fen for t in cross if t.code == 0),
            "home_taps": len(taps) - len(cross),
            "held_by_outage": sum(1 for t in taps if t.held),  # left out of the latencies
            "standins": {f"{city}:{state}": n for (city, state), n in sorted(standins.items())},
            "cleared_records": (report.records if report else 0),
            "cleared_gross_fen": sum(f.get("receivable_gross_fen", 0) for f in flows.values()),
        },
        "latency_ms": {"cross_city": latency(cross), "home": latency([t for t in taps if not t.cross])},
        "results": {"cross_city": _codes(cross), "home": _codes([t for t in taps if not t.cross])},
        "timeline": timeline(taps),
        "outage": outage,
        "settlement_windows": windows,
        "clearing": {**clearing, "multilateral_fen": dict(report.multilateral) if report else {},
                     "net_position_matrix": matrix},
        "flows": flows,
        "refusals": refusals,
        "audit": verdict.as_dict(),
        "money": {c: b.money for c, b in books.items()},
        "errors": errors[:50],
    }


__all__ = ["build_report", "latency", "percentile", "timeline"]
