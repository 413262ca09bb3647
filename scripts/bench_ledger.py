"""Pure fare + ledger apply rate on one core (no I/O): taps/s through Ledger.apply.

Bus taps priced by the shipped fare table. "common": adult home-issuer cards with no pass and
no concession (the inline path, and the 300,000 taps/s target). "mixed": a quarter of the cards
are students, elderly or disabled (concessions, ride limits) and a fifth hold a monthly pass,
so many taps take the general rules path.

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

_OK = int(Result.OK)
T0_MS = 1_700_000_000_000  # the shipped table's first version is in force


def one_run(n_taps: int, batch: int, seed: int, mixed: bool = False) -> float:
    rng = random.Random(seed)
    ledger = Ledger(0, shipped_tables(), dedupe_limit=2_000_000)
    cards = [make_card_no(i) for i in range(1, 100_001)]
    for c in cards:
        category, monthly_pass = Category.ADULT, None
        if mixed:
            if rng.random() < 0.25:
                category = rng.choice([Category.STUDENT, Category.ELDERLY, Category.DISABLED])
            if rng.random() < 0.2:
                monthly_pass = (0, 2**62)
        ledger.add_card(CardState(c, CardStatus.ACTIVE, category, 10_000_000, monthly_pass=monthly_pass))
    taps = [Tap(1000 + i % 500, i + 1, cards[rng.randrange(len(cards))], T0_MS + i,
                int(TapKind.BUS), rng.randint(1, 600)) for i in range(n_taps)]
    ok = 0
    apply_s = 0.0  # only Ledger.apply is timed; the check below is not
    for i in range(0, n_taps, batch):
        # like the shard: the batch's outcomes and rows are dropped once answered and written
        started = time.perf_counter()
        outcomes, _rows = ledger.apply(taps[i : i + batch], T0_MS)
        apply_s += time.perf_counter() - started
        ok += sum(1 for o in outcomes if o.result == _OK)
    rate = n_taps / apply_s
    # a plain benchmark of charged rides: (nearly) every tap pays the card fare
    # mixed: elderly and disabled riders reach their daily ride limit; the rest pay
    assert ok > (0.9 if mixed else 0.99) * n_taps, f"only {ok} of {n_taps} taps were charged"
    return rate


def main() -> None:
    for mixed in (False, True):
        rates = [one_run(500_000, 4000, seed, mixed) for seed in range(3)]
        print(f"ledger apply, {'mixed' if mixed else 'common'} rides: median {statistics.median(rates):,.0f} "
              f"taps/s (min {min(rates):,.0f}, max {max(rates):,.0f}), 3 runs of 500,000 bus taps in "
              f"batches of 4,000", flush=True)


if __name__ == "__main__":
    main()
