"""Pure fare + ledger apply rate on one core (no I/O): taps/s through Ledger.apply.

    .venv/bin/python scripts/bench_ledger.py
"""

import random
import statistics
import time

from citycard.domain.cards import CardState, make_card_no
from citycard.domain.fares import FareTable
from citycard.domain.ledger import Ledger
from citycard.domain.taps import Tap, TapKind


def one_run(n_taps: int, batch: int, seed: int) -> float:
    rng = random.Random(seed)
    ledger = Ledger(0, FareTable(), dedupe_limit=2_000_000)
    cards = [make_card_no(i) for i in range(1, 100_001)]
    for c in cards:
        ledger.add_card(CardState(c, 0, 0, 10_000_000))
    taps = [Tap(1000 + i % 500, i + 1, cards[rng.randrange(len(cards))], 1_700_000_000_000 + i,
                int(TapKind.BUS), rng.randint(1, 600)) for i in range(n_taps)]
    started = time.perf_counter()
    for i in range(0, n_taps, batch):
        ledger.apply(taps[i : i + batch], 1_700_000_000_000)
    return n_taps / (time.perf_counter() - started)


def main() -> None:
    rates = [one_run(500_000, 4000, seed) for seed in range(3)]
    print(f"ledger apply: median {statistics.median(rates):,.0f} taps/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}), 3 runs of 500,000 bus taps in batches of 4,000")


if __name__ == "__main__":
    main()
