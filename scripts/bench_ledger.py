"""Pure fare + ledger apply rate on one core (no I/O): taps/s through Ledger.apply.

Bus taps of adult home-issuer cards (no pass, no concession) priced by the shipped fare table.

    .venv/bin/python scripts/bench_ledger.py
"""

import random
import statistics
import time

from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import CardState, CardStatus, Category, make_card_no
from citycard.domain.ledger import Ledger
from citycard.domain.results import Result
from citycard.domain.taps import Tap, TapKind

T0_MS = 1_700_000_000_000  # the shipped table's first version is in force


def one_run(n_taps: int, batch: int, seed: int) -> float:
    rng = random.Random(seed)
    ledger = Ledger(0, shipped_tables(), dedupe_limit=2_000_000)
    cards = [make_card_no(i) for i in range(1, 100_001)]
    for c in cards:
        ledger.add_card(CardState(c, CardStatus.ACTIVE, Category.ADULT, 10_000_000))
    taps = [Tap(1000 + i % 500, i + 1, cards[rng.randrange(len(cards))], T0_MS + i,
                int(TapKind.BUS), rng.randint(1, 600)) for i in range(n_taps)]
    answers = []
    started = time.perf_counter()
    for i in range(0, n_taps, batch):
        answers.append(ledger.apply(taps[i : i + batch], T0_MS)[0])
    rate = n_taps / (time.perf_counter() - started)
    # a plain benchmark of charged rides: (nearly) every tap pays the card fare
    ok = sum(1 for outcomes in answers for o in outcomes if o.result == Result.OK)
    assert ok > 0.99 * n_taps, f"only {ok} of {n_taps} taps were charged"
    return rate


def main() -> None:
    rates = [one_run(500_000, 4000, seed) for seed in range(3)]
    print(f"ledger apply: median {statistics.median(rates):,.0f} taps/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}), 3 runs of 500,000 bus taps in batches of 4,000")


if __name__ == "__main__":
    main()
