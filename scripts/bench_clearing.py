"""Regional clearing (issue 15's figure: at least 1,000,000 records cleared and netted in 10 s).

    .venv/bin/python scripts/bench_clearing.py --records 1000000 --cities 10 --runs 3

Pure, one core, no services. Builds in memory, once, one signed delivery per city for the
window: ``--records`` cross-city taps spread evenly over the acquirer cities, each acquirer's
taps round robin over the other cities as issuers (one file per issuer), half of them offline
(with a TAC's fields; the house does not check TACs, issuers do). Not timed. Each run then
times, on a fresh ClearingHouse, ``ingest`` of every delivery (signature, manifest, SHA-256,
every row's format, issuer, prefix and duplicate checks) plus ``close`` (fees, bilateral and
multilateral netting, caps), and checks that every record was accepted and the positions sum
to 0. Prints JSON: records/s (wall clock) median, min and max over the runs, and each run's
wall and CPU seconds (the CPU figure shows what a machine shared with other work took from us).
"""

import argparse
import csv
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from citycard.domain.clearing import ClearingHouse  # noqa: E402
from citycard.domain.clearing_records import ClearingCode  # noqa: E402
from citycard.protocols import clearing_files  # noqa: E402
from citycard.protocols.settlement_files import manifest, sign  # noqa: E402

WINDOW = "2026-12-07"
WHEN = "20261207081500"


def city(i: int) -> str:
    return f"C{i:03d}"


def prefix(i: int) -> str:
    return str(310 + i)


def build(records: int, cities: int) -> tuple[list[Ed25519PrivateKey], list[tuple[str, bytes, bytes, dict[str, bytes]]]]:
    keys = [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(cities)]
    deliveries = []
    for a in range(cities):
        n = records // cities + (1 if a < records % cities else 0)
        others = [i for i in range(cities) if i != a]
        rows: dict[int, list[tuple[Any, ...]]] = {i: [] for i in others}
        acq = city(a)
        for k in range(n):
            i = others[k % len(others)]
            tid, seq = 1000 + k % 500, k // 500
            card = f"{prefix(i)}{k % 100_000:013d}"
            amount = 100 + k % 400
            if k % 2:
                rows[i].append((f"{acq}:{tid}:{seq}", city(i), acq, card, amount, "offline", WINDOW, tid, seq,
                                WHEN, k % 60_000, 5000, 9, "0a1b2c3d"))
            else:
                rows[i].append((f"{acq}:{tid}:{seq}", city(i), acq, card, amount, "online", WINDOW, tid, seq,
                                WHEN, "", "", "", ""))
        files = {}
        for i, rs in rows.items():
            out = io.StringIO()
            w = csv.writer(out, lineterminator="\n")
            w.writerow(clearing_files.COLUMNS)
            w.writerows(rs)
            files[f"{acq}-to-{city(i)}-{WINDOW}.csv"] = out.getvalue().encode()
        m = manifest(acq, WINDOW, files, clearing_files.tally)
        deliveries.append((acq, m, sign(keys[a], m), files))
    return keys, deliveries


def run(keys: list[Ed25519PrivateKey], deliveries: list[tuple[str, bytes, bytes, dict[str, bytes]]],
        records: int) -> tuple[float, float]:
    house = ClearingHouse(retain_windows=7, max_records_per_window=max(records, 1))
    for i, k in enumerate(keys):
        house.register(city(i), k.public_key(), net_debit_cap_fen=10**12, rate_bp=50 + i,
                       card_prefixes=(prefix(i),))
    start, cpu = time.perf_counter(), time.process_time()
    accepted = 0
    for sender, m, sig, files in deliveries:
        got = house.ingest(sender, WINDOW, m, sig, files)
        if got.code != ClearingCode.OK or got.rejected:
            raise SystemExit(f"{sender}: {got.code.name} {got.reason} {got.rejected[:3]}")
        accepted += got.accepted
    closed = house.close(WINDOW)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert closed.report is not None and sum(closed.report.multilateral.values()) == 0
    assert accepted == records == closed.report.records, (accepted, records)
    return took, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--cities", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if args.cities < 2 or args.records < 1 or args.runs < 1:
        ap.error("--cities >= 2, --records >= 1, --runs >= 1")
    t0 = time.perf_counter()
    keys, deliveries = build(args.records, args.cities)
    built = time.perf_counter() - t0
    timed = [run(keys, deliveries, args.records) for _ in range(args.runs)]
    seconds = [wall for wall, _ in timed]
    rates = [args.records / s for s in seconds]
    print(json.dumps({"records": args.records, "cities": args.cities, "runs": args.runs,
                      "build_s": round(built, 2), "seconds": [round(s, 3) for s in seconds],
                      "cpu_seconds": [round(c, 3) for _, c in timed],
                      "records_per_s": {"median": round(statistics.median(rates)), "min": round(min(rates)),
                                        "max": round(max(rates))}}, indent=2))


if __name__ == "__main__":
    main()
