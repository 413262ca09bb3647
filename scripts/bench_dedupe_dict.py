"""The shards' dedupe memory once full (domain/ledger.py): each tap deletes the oldest entry
and inserts one. CPython rebuilds a dict whole when its entry table fills with deleted slots,
so one dict of 2 M entries pauses; the ledger stripes it over 64 dicts by the key's low bits.
Both layouts are timed in the same run; pauses over 5 ms are counted.

    python3 scripts/bench_dedupe_dict.py
"""

import time
from collections import deque

ENTRIES = 2_000_000  # ledger.dedupe_limit's default
OPERATIONS = 3_000_000
PAUSE_S = 0.005


def run(stripes: int) -> tuple[float, float, int]:
    """(total s, worst operation ms, pauses over PAUSE_S)."""
    mask = stripes - 1
    seen: list[dict[int, tuple[int, int, int, int]]] = [{} for _ in range(stripes)]
    order: deque[int] = deque()
    for key in range(ENTRIES):
        seen[key & mask][key] = (key, 0, 182, 1000)
        order.append(key)
    worst_s = 0.0
    pauses = 0
    key = ENTRIES
    started = time.perf_counter()
    for _ in range(OPERATIONS):
        t = time.perf_counter()
        seen[key & mask][key] = (key, 0, 182, 1000)
        order.append(key)
        key += 1
        old = order.popleft()
        del seen[old & mask][old]
        took_s = time.perf_counter() - t
        worst_s = max(worst_s, took_s)
        pauses += took_s > PAUSE_S
    return time.perf_counter() - started, worst_s * 1000, pauses


def main() -> None:
    for stripes in (1, 64):
        total_s, worst_ms, pauses = run(stripes)
        print(f"{stripes:>2} dict(s): {OPERATIONS:,} operations in {total_s:.1f} s;"
              f" worst {worst_ms:.1f} ms; {pauses} over {PAUSE_S * 1000:g} ms")


if __name__ == "__main__":
    main()
