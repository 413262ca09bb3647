"""What each tap of the load lab is: which card, which kind, which amount.

Pure: no I/O, no clock. Time comes in as an argument and randomness from a passed
``random.Random``, so a seed replays the same taps. ``TapMaker.make`` runs once per tap at up
to 100,000 taps/s across the sender processes, so it is written for speed: no per-call
dicts or closures, one or two ``random()`` draws for a bus ride.

Cards: a new tap goes to the hot card (``hot_share``), a visitor card (``visitor_share``), a
card that does not exist (``unknown_share``: home-issuer numbers with a valid check digit far
beyond any city's serials, so they are UNKNOWN_CARD, not malformed), or else a home card,
uniformly. Bike docks and parking lots send both taps of a pair: with open rentals (or
parked cards) of that kind anywhere in the city, half their taps close the oldest one (a
return or an exit); a new card that already has one open closes it instead of opening a
second. Open pairs are kept per kind, at most ``max_open_pairs``, the oldest forgotten.
Amounts are plausible for the kind (``AMOUNT_FEN``); medical bills carry a bill class.
"""

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..domain.cards import HANGZHOU_ISSUER, issuer_of
from ..domain.rules import LIBRARY_BORROW, LIBRARY_RETURN
from ..domain.taps import BillClass, TapKind
from ..protocols import messages as m
from .city import CardNumbers, TerminalPlan

# (lowest, highest + 1) fen of a new tap's amount, by kind.
AMOUNT_FEN: dict[int, tuple[int, int]] = {
    int(TapKind.TAXI): (1_000, 8_001),  # 10 to 80 yuan
    int(TapKind.MERCHANT): (100, 30_001),  # 1 to 300 yuan
    int(TapKind.PETROL): (5_000, 40_001),  # 50 to 400 yuan
}
# Medical bills: (bill class, share of bills, lowest fen, highest + 1 fen).
MEDICAL_BILLS = (
    (BillClass.OUTPATIENT, 0.60, 2_000, 50_001),  # 20 to 500 yuan
    (BillClass.PHARMACY, 0.35, 1_000, 30_001),  # 10 to 300 yuan
    (BillClass.INPATIENT, 0.05, 50_000, 500_001),  # 500 to 5,000 yuan
)
CLOSE_SHARE = 0.5  # of a dock's or lot's taps, while some pair of its kind is open
LIBRARY_BORROW_SHARE = 0.5
UNKNOWN_FIRST_SERIAL = 9_000_000_000  # no city plan issues this many cards (MAX_SCALE: 1 G)
UNKNOWN_POOL = 4_096  # distinct nonexistent cards

_BUS = int(TapKind.BUS)
_TAXI, _MERCHANT, _PETROL = int(TapKind.TAXI), int(TapKind.MERCHANT), int(TapKind.PETROL)
_WATER_BUS, _PARK = int(TapKind.WATER_BUS), int(TapKind.PARK_ENTRY)
_LIBRARY, _MEDICAL = int(TapKind.LIBRARY), int(TapKind.MEDICAL)
_BIKE_RENT, _BIKE_RETURN = int(TapKind.BIKE_RENT), int(TapKind.BIKE_RETURN)
_PARKING_ENTRY, _PARKING_EXIT = int(TapKind.PARKING_ENTRY), int(TapKind.PARKING_EXIT)
_TapItem = m.TapItem


@dataclass(frozen=True)
class TapMix:
    """Who taps. Shares of new taps, each in [0, 1], summing to at most 1; the rest go to
    home cards."""

    hot_card: int | None = None
    hot_share: float = 0.0  # taps on the hot card
    visitor_share: float = 0.0  # taps by visitor cards (other issuers)
    unknown_share: float = 0.0  # taps by cards that do not exist

    def __post_init__(self) -> None:
        shares = {"hot_share": self.hot_share, "visitor_share": self.visitor_share,
                  "unknown_share": self.unknown_share}
        for name, share in shares.items():
            if not (isinstance(share, int | float) and 0.0 <= share <= 1.0):
                raise ValueError(f"TapMix.{name} must be in [0, 1], got {share!r}")
        total = sum(shares.values())
        if total > 1.0 + 1e-12:
            raise ValueError(f"TapMix shares must sum to at most 1, got {total:g} "
                             f"(hot {self.hot_share:g} + visitor {self.visitor_share:g} + "
                             f"unknown {self.unknown_share:g})")
        if self.hot_share > 0 and self.hot_card is None:
            raise ValueError("TapMix.hot_share > 0 needs a hot_card")

    @property
    def home_share(self) -> float:
        return max(0.0, 1.0 - self.hot_share - self.visitor_share - self.unknown_share)


class TapMaker:
    """Makes the taps of every terminal of one sender (one instance per process)."""

    __slots__ = ("mix", "max_open_pairs", "_random", "_home", "_n_home", "_visitors", "_n_visitors",
                 "_hot", "_hot_below", "_visitor_below", "_unknown_below", "_unknown", "_unknown_set",
                 "_open_bikes", "_open_lots")

    def __init__(self, home_cards: Sequence[int], visitor_cards: Sequence[int], mix: TapMix,
                 rng: random.Random, max_open_pairs: int = 10_000) -> None:
        if max_open_pairs < 1:
            raise ValueError(f"max_open_pairs must be >= 1, got {max_open_pairs}")
        if mix.home_share > 0 and not home_cards:
            raise ValueError("home-card taps (shares sum below 1) need home_cards")
        if mix.visitor_share > 0 and not visitor_cards:
            raise ValueError("TapMix.visitor_share > 0 needs visitor_cards")
        self.mix = mix
        self.max_open_pairs = max_open_pairs
        self._random = rng.random
        self._home = home_cards
        self._n_home = len(home_cards)
        self._visitors = visitor_cards
        self._n_visitors = len(visitor_cards)
        self._hot = mix.hot_card if mix.hot_card is not None else 0
        self._hot_below = mix.hot_share
        self._visitor_below = mix.hot_share + mix.visitor_share
        # A home card when random() >= this: exactly never when the shares sum to 1.
        self._unknown_below = (mix.hot_share + mix.visitor_share + mix.unknown_share
                               if mix.home_share > 0 else 2.0)
        issuer = issuer_of(home_cards[0]) if home_cards else HANGZHOU_ISSUER
        self._unknown = list(CardNumbers(UNKNOWN_POOL, issuer, UNKNOWN_FIRST_SERIAL))
        self._unknown_set = frozenset(self._unknown)
        self._open_bikes: OrderedDict[int, None] = OrderedDict()
        self._open_lots: OrderedDict[int, None] = OrderedDict()

    @property
    def open_pairs(self) -> dict[str, int]:
        """Open bike rentals and parked cards this maker will close."""
        return {"bike": len(self._open_bikes), "parking": len(self._open_lots)}

    def make(self, plan: TerminalPlan, seq: int, time_ms: int) -> m.TapItem:
        """The tap terminal ``plan`` sends as number ``seq`` at ``time_ms``."""
        kind = plan.kind
        rnd = self._random
        if kind == _BUS:  # nine taps in ten: inline
            r = rnd()
            card = self._home[int(rnd() * self._n_home)] if r >= self._unknown_below else self._special(r)
            return _TapItem(seq, card, time_ms, kind, plan.route)
        if kind == _TAXI or kind == _MERCHANT or kind == _PETROL:
            lo, hi = AMOUNT_FEN[kind]
            return _TapItem(seq, self._new_card(), time_ms, kind, plan.route if kind == _MERCHANT else 0,
                            lo + int(rnd() * (hi - lo)))
        if kind == _BIKE_RENT or kind == _BIKE_RETURN:
            return self._pair(self._open_bikes, _BIKE_RENT, _BIKE_RETURN, plan.route, seq, time_ms)
        if kind == _PARKING_ENTRY or kind == _PARKING_EXIT:
            return self._pair(self._open_lots, _PARKING_ENTRY, _PARKING_EXIT, plan.route, seq, time_ms)
        if kind == _WATER_BUS or kind == _PARK:
            return _TapItem(seq, self._new_card(), time_ms, kind, plan.route)
        if kind == _LIBRARY:
            route = LIBRARY_BORROW if rnd() < LIBRARY_BORROW_SHARE else LIBRARY_RETURN
            return _TapItem(seq, self._new_card(), time_ms, kind, route)
        if kind == _MEDICAL:
            return self._medical(seq, time_ms)
        raise ValueError(f"terminal {plan.terminal_id}: no taps for kind {kind}")

    def _new_card(self) -> int:
        r = self._random()
        if r >= self._unknown_below:
            return self._home[int(self._random() * self._n_home)]
        return self._special(r)

    def _special(self, r: float) -> int:
        """The card of a new tap that is not a home card's, for a draw r < _unknown_below."""
        if r < self._hot_below:
            return self._hot
        if r < self._visitor_below:
            return self._visitors[int(self._random() * self._n_visitors)]
        return self._unknown[int(self._random() * UNKNOWN_POOL)]

    def _pair(self, opened: "OrderedDict[int, None]", open_kind: int, close_kind: int, route: int,
              seq: int, time_ms: int) -> m.TapItem:
        if opened and self._random() < CLOSE_SHARE:
            card, _ = opened.popitem(last=False)
            return _TapItem(seq, card, time_ms, close_kind, route)
        card = self._new_card()
        if card in opened:  # this card has one open: this tap closes it
            del opened[card]
            return _TapItem(seq, card, time_ms, close_kind, route)
        if card not in self._unknown_set:  # an unknown card opens nothing
            opened[card] = None
            if len(opened) > self.max_open_pairs:
                opened.popitem(last=False)
        return _TapItem(seq, card, time_ms, open_kind, route)

    def _medical(self, seq: int, time_ms: int) -> m.TapItem:
        rnd = self._random
        r = rnd()
        bill_class, _, lo, hi = MEDICAL_BILLS[-1]
        for bill in MEDICAL_BILLS:
            if r < bill[1]:
                bill_class, _, lo, hi = bill
                break
            r -= bill[1]
        return _TapItem(seq, self._new_card(), time_ms, _MEDICAL, 0, lo + int(rnd() * (hi - lo)), int(bill_class))
