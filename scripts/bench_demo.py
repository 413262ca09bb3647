"""Run ``citycard demo --json`` several times; print median, min and max of the figures.

    .venv/bin/python scripts/bench_demo.py --runs 3 -- --taps 200000
"""

import argparse
import json
import statistics
import subprocess
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("demo_args", nargs=argparse.REMAINDER, help="after --: arguments for citycard demo")
    args = p.parse_args()
    extra = [a for a in args.demo_args if a != "--"]
    rates, p50s, p99s = [], [], []
    for i in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-m", "citycard.cli.main", "demo", "--json", *extra],
            capture_output=True, text=True, timeout=1800,
        )
        if out.returncode != 0:
            print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
            return 1
        s = json.loads(out.stdout)
        rates.append(s["durable_taps_per_s"])
        p50s.append(s["latency_ms"]["p50"])
        p99s.append(s["latency_ms"]["p99"])
        print(f"run {i + 1}: {s['durable_taps_per_s']:,.0f} taps/s, p50 {s['latency_ms']['p50']:.1f} ms, "
              f"p99 {s['latency_ms']['p99']:.1f} ms, audit ok={s['audit']['ok']}", flush=True)

    def fmt(xs: list[float], unit: str) -> str:
        return f"median {statistics.median(xs):,.1f} {unit} (min {min(xs):,.1f}, max {max(xs):,.1f})"

    print("durable taps/s:", fmt(rates, "taps/s"))
    print("p50 latency:   ", fmt(p50s, "ms"))
    print("p99 latency:   ", fmt(p99s, "ms"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
