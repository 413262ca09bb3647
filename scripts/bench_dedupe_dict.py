"""A dict of 2 M entries deleted at the front and inserted at the end, as the shards' dedupe
memory is once full (domain/ledger.py): each operation is timed and pauses over 5 ms printed.
CPython rebuilds the dict whole when its entry table fills with deleted slots.

    python3 scripts/bench_dedupe_dict.py
"""

import time
from collections import deque

ENTRIES = 2_000_000  # ledger.dedupe_limit's default
OPERATIONS = 3_000_000
PAUSE_S = 0.005


def main() -> None:
    seen: dict[int, tuple[int, int, int, int]] = {}
    order: deque[int] = deque()
    for key in range(ENTRIES):
        seen[key] = (key, 0, 182, 1000)
        order.append(key)
    pauses: list[tuple[int, float]] = []
    key = ENTRIES
    started = time.perf_counter()
    for i in range(OPERATIONS):
        t = time.perf_counter()
        seen[key] = (key, 0, 182, 1000)
        order.append(key)
        key += 1
        del seen[order.popleft()]
        took_s = time.perf_counter() - t
        if took_s > PAUSE_S:
            pauses.append((i, round(took_s * 1000, 1)))
    total_s = time.perf_counter() - started
    print(f"{OPERATIONS:,} operations in {total_s:.1f} s; pauses over {PAUSE_S * 1000:g} ms"
          f" (operation, ms): {pauses[:10]}, {len(pauses)} in all")


if __name__ == "__main__":
    main()
