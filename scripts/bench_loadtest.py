"""Repeat ``citycard loadtest --find-max --baselines`` and summarise: median, min and max of the
maximum accepted rate, p99 at half of it, the naive SQL ledger, the raw COPY rate and the
ratios, and CPU per tap by process. Arguments after ``--`` go to ``citycard loadtest``.

    .venv/bin/python scripts/bench_loadtest.py --runs 3 -- --rate 20000 --terminals 64 --linger-ms 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any


def run_once(extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "citycard.cli.main", "loadtest", "--find-max", "--baselines", "--json",
           "--no-report", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if not out.stdout.strip():
        raise SystemExit(f"loadtest printed nothing (exit {out.returncode}): {out.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def figures(r: dict[str, Any]) -> dict[str, float]:
    fm, b = r["find_max"], r["baselines"] or {}
    half = fm.get("half_max") or {}
    return {
        "max_accepted_per_s": fm["max_accepted_per_s"],
        "half_rate_per_s": half.get("rate_per_s", 0.0),
        "half_p99_ms": half.get("p99_ms", 0.0),
        "naive_sql_taps_per_s": b.get("naive_sql_taps_per_s", 0.0),
        "raw_copy_rows_per_s": b.get("raw_copy_rows_per_s", 0.0),
        "ratio_to_naive": b.get("ratio_to_naive") or 0.0,
        "share_of_copy": b.get("share_of_copy") or 0.0,
        "cpu_us_per_tap_total": r["processes"]["cpu_us_per_tap_total"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("extra", nargs="*", help="arguments for citycard loadtest (after --)")
    args = p.parse_args()
    rows, cpu = [], []
    for i in range(args.runs):
        r = run_once(args.extra)
        f = figures(r)
        rows.append(f)
        cpu.append(r["processes"]["cpu_us_per_tap"])
        steps = ", ".join(f"{s['rate_per_s']:,.0f}->{s['accepted_per_s']:,.0f} (p99 {s['p99_ms']:.0f})"
                          for s in r["find_max"]["steps"])
        print(f"run {i + 1}: audit {'PASS' if r['audit']['ok'] else 'FAIL'}; steps {steps}; "
              + ", ".join(f"{k} {v:,.3g}" for k, v in f.items()), flush=True)
        print(f"  stop: {r['find_max']['steps'][-1]['stop_reason']}", flush=True)
    print("\nmedian (min, max) of", args.runs, "runs:")
    for key in rows[0]:
        vals = [row[key] for row in rows]
        print(f"  {key}: {statistics.median(vals):,.4g} ({min(vals):,.4g}, {max(vals):,.4g})")
    roles = sorted({k for c in cpu for k in c})
    print("  CPU us per answered tap, median: " + ", ".join(
        f"{role} {statistics.median([c.get(role, 0.0) for c in cpu]):.1f}" for role in roles))


if __name__ == "__main__":
    main()
