"""The load lab's report as data: totals, the latency timeline and CDF, results by code,
the audit, find-max, baselines and processes (``report.py`` draws it)."""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from typing import Any

from . import audit as audit_mod
from .city import CityModel
from .command import rerunnable
from .lab import PhaseResult
from .latency import LatencyTotals, merge_intervals
from .measure import accepted_in_window
from .scenarios import Storm
from .targets import CityView, Target
from .verdict import REFUSED_SHARE_MAX, refused_share, why_failed

CDF_PERCENTILES = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)


def processes_report(phases: list[PhaseResult]) -> dict[str, Any]:
    """CPU seconds by process role over all phases, per answered tap, and memory over time."""
    cpu: dict[str, float] = {}
    for p in phases:
        for role, s in p.extra.get("cpu_s", {}).items():
            cpu[role] = cpu.get(role, 0.0) + s
    answered = sum(p.totals.answered for p in phases)
    memory: list[dict[str, float]] = []
    offset_s = 0.0
    for p in phases:
        memory += [{**m, "t_s": m["t_s"] + offset_s} for m in p.extra.get("memory_mb", [])]
        offset_s += p.phase.duration_s
    return {"cpu_s": cpu, "cpu_us_per_tap": {r: s * 1e6 / answered for r, s in cpu.items()} if answered else {},
            "cpu_us_per_tap_total": sum(cpu.values()) * 1e6 / answered if answered else 0.0,
            "memory_mb": memory,
            "note": "this run's own processes on this machine: its platform's process tree (Ray, embedded "
                    "servers) and the Postgres backends serving its connections; senders count their own CPU"}


def build_report(args: Namespace, target: Target, view: CityView, model: CityModel, phases: list[PhaseResult],
                 description: str, started_at: str, answered: audit_mod.AnsweredCheck, ledger: audit_mod.Audit,
                 find_max_report: dict[str, Any] | None, baselines: dict[str, Any] | None,
                 storm: Storm | None, offline: dict[str, Any] | None = None) -> dict[str, Any]:
    totals = LatencyTotals.merge([p.totals for p in phases])
    pct = totals.percentiles()
    duration_s = sum(p.phase.duration_s for p in phases)
    scheduled = sum(p.scheduled for p in phases)
    timeline: list[dict[str, Any]] = []
    offset_s = 0.0
    for p in phases:  # phases one after another on one time axis
        intervals = {s.index: s for s in merge_intervals(p.intervals)}
        for index in sorted(set(intervals) | set(p.offered)):
            snap = intervals.get(index)
            q = snap.percentiles() if snap is not None and snap.answered else None
            timeline.append({"t_s": offset_s + index, "offered": p.offered.get(index, 0),
                             "answered": snap.answered if snap else 0, "timeouts": snap.timeouts if snap else 0,
                             "p50_ms": q.p50_ms if q else 0.0, "p90_ms": q.p90_ms if q else 0.0,
                             "p99_ms": q.p99_ms if q else 0.0, "max_ms": q.max_ms if q else 0.0})
        offset_s += max((s.end_ms for s in p.intervals), default=p.phase.duration_s * 1000.0) / 1000.0
    histogram = totals.histogram()
    cdf = [[p_, histogram.get_value_at_percentile(p_) / 1000.0] for p_ in CDF_PERCENTILES] if totals.answered else []
    codes: dict[str, int] = {}
    for p in phases:
        for k, v in p.codes.items():
            codes[k] = codes.get(k, 0) + v
    errors = [e for p in phases for e in p.errors]
    replays_sent = sum(p.replays_sent for p in phases)
    replays_matched = sum(p.replays_matched for p in phases)
    charged_seen = sum(p.charged_fen for p in phases)
    audit = {**ledger.as_dict(), "answered_checked": answered.checked,
             "answered_missing_rows": answered.missing_rows, "answered_extra_rows": answered.extra_rows,
             "answered_code_mismatches": answered.code_mismatches,
             "answered_fare_mismatches": answered.fare_mismatches,
             "replays_sent": replays_sent, "replays_matched": replays_matched,
             "charged_fen_told_to_terminals": charged_seen,
             "ok": ledger.ok and answered.ok and replays_matched == replays_sent}
    accepted = max((accepted_in_window(p) for p in phases), default=0.0) if args.find_max else (
        accepted_in_window(phases[0]) if phases else 0.0)
    report: dict[str, Any] = {
        "run": {"scenario": "find-max" if args.find_max else phases[0].phase.name if phases else args.scenario,
                "target": target.description, "started_at": started_at, "duration_s": duration_s,
                "profile": description, "senders": args.senders, "terminals": len(view.terminals),
                "cards": len(view.home_cards) + len(view.visitor_cards), "city_scale": model.scale,
                "account_shards": target.account_shards, "seed": args.seed,
                "command": rerunnable(sys.argv, os.environ),
                "linger_ms": args.linger_ms, "timeout_ms": args.timeout_ms, "batch_max": args.batch},
        "totals": {"scheduled": scheduled, "answered": totals.answered, "timeouts": totals.timeouts,
                   "shed": totals.shed, "retries": totals.retries, "late_answers": totals.late_answers,
                   "unknown_answers": totals.unknown_answers, "busy_or_retry_answers": sum(p.retryable for p in phases),
                   "reconnects": sum(p.reconnects for p in phases),
                   "offered_per_s": scheduled / duration_s if duration_s else 0.0, "accepted_per_s": accepted,
                   "max_send_lag_ms": totals.max_send_lag_ms,
                   "latency_ms": {"p50": pct.p50_ms, "p90": pct.p90_ms, "p99": pct.p99_ms,
                                  "p99.9": pct.p999_ms, "max": pct.max_ms, "mean": pct.mean_ms}},
        "timeline": timeline, "cdf": cdf, "codes": dict(sorted(codes.items(), key=lambda kv: -kv[1])),
        "errors": errors, "audit": audit, "baselines": baselines, "find_max": find_max_report,
        "processes": processes_report(phases),
    }
    if storm is not None:
        report["hotlist_storm"] = {"planned": storm.count, "per_s": storm.per_s, "reported": storm.reported,
                                   "failed": storm.failed, "errors": storm.errors}
        errors += storm.errors
    if offline is not None:
        report["offline"] = offline_section(offline, duration_s)
    refused, _ = refused_share(report["codes"])
    report["ok"] = bool(audit["ok"] and not errors and totals.answered > 0
                        and (storm is None or storm.failed == 0)
                        and (offline is None or report["offline"]["ok"])
                        and refused < REFUSED_SHARE_MAX)
    report["why_failed"] = why_failed(report)
    return report


def offline_section(offline: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """The offline uploads of the run: rates, upload latency, codes by name, the generator's CPU
    per record, and the offline audit. ``ok`` only when every record was answered as an honest
    card's (forged ones BAD_TAC), every replay matched and the audit passed."""
    up, audit = offline.get("uploader") or {}, offline.get("audit")
    made, acked = int(up.get("records_made", 0)), int(up.get("records_acked", 0))
    last_ack_s = float(up.get("last_ack_ms", 0.0)) / 1000.0
    cpu_s = float(up.get("cpu_s", 0.0))
    checks = {
        "audit passed": bool(audit and audit.get("ok")),
        "every record answered": made > 0 and acked == made,
        "codes as expected": not up.get("unexpected_codes"),
        "no batch left unanswered": not up.get("failed_batches"),
        "replays answered identically": up.get("replays_sent", 0) == up.get("replays_matched", 0),
        "uploader ran": "failed" not in up,
    }
    return {
        **offline.get("spec", {}),
        "records_made": made, "forged_made": up.get("forged_made", 0), "records_acked": acked,
        "batches_acked": up.get("batches_acked", 0), "refused_by_cards": up.get("refused_by_cards", 0),
        "offered_records_per_s": made / duration_s if duration_s else 0.0,
        "acked_records_per_s": acked / max(duration_s, last_ack_s) if acked else 0.0,
        "upload_latency_ms": up.get("latency_ms", {}), "codes": up.get("codes", {}),
        "replays_sent": up.get("replays_sent", 0), "replays_matched": up.get("replays_matched", 0),
        "retries": up.get("retries", 0), "failed_batches": up.get("failed_batches", 0),
        "unexpected_codes": up.get("unexpected_codes", []),
        "generator_cpu_s": cpu_s, "generator_cpu_us_per_record": cpu_s * 1e6 / made if made else 0.0,
        "audit": audit, "checks": checks, "ok": all(checks.values()),
        "files": {k: up[k] for k in ("records_file", "cards_file") if k in up},
    }
