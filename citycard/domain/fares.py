"""Minimal fare rules for the spine: bus card fare, water bus per route, amount-priced kinds.

The city's full rules (passes, concessions, bikes, parking, parks, ...) replace this module's
table with versioned tables; the ``price`` contract stays: (result, fare_fen).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .money import percent_of_fen
from .results import Result
from .taps import Tap, TapKind

_AMOUNT_KINDS = frozenset((int(TapKind.TAXI), int(TapKind.MERCHANT), int(TapKind.PETROL)))
_KNOWN_KINDS = frozenset(int(k) for k in TapKind)
_BUS = int(TapKind.BUS)
_WATER_BUS = int(TapKind.WATER_BUS)
_OK = int(Result.OK)
_BAD_TAP = int(Result.BAD_TAP)


@dataclass(frozen=True)
class FareTable:
    _bus_default_fare_fen: int = field(init=False, repr=False, compare=False)
    _bus_fare_fen: Mapping[int, int] = field(init=False, repr=False, compare=False)

    version: int = 1
    bus_card_percent: int = 91
    bus_default_base_fen: int = 200
    bus_route_base_fen: Mapping[int, int] = field(default_factory=dict)
    water_bus_default_fen: int = 300
    water_bus_route_fen: Mapping[int, int] = field(default_factory=dict)
    max_amount_fen: int = 1_000_000  # one POS debit may not exceed 10,000 yuan

    def __post_init__(self) -> None:
        # Card fares per listed route, computed once: pricing a bus tap is then one lookup.
        pct = self.bus_card_percent
        object.__setattr__(self, "_bus_default_fare_fen", percent_of_fen(self.bus_default_base_fen, pct))
        object.__setattr__(
            self, "_bus_fare_fen", {r: percent_of_fen(b, pct) for r, b in self.bus_route_base_fen.items()}
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "FareTable":
        bus = raw.get("bus", {})
        water = raw.get("water_bus", {})
        return cls(
            version=int(raw.get("version", 1)),
            bus_card_percent=int(bus.get("card_percent", 91)),
            bus_default_base_fen=int(bus.get("default_base_fen", 200)),
            bus_route_base_fen={int(k): int(v) for k, v in bus.get("route_base_fen", {}).items()},
            water_bus_default_fen=int(water.get("default_fen", 300)),
            water_bus_route_fen={int(k): int(v) for k, v in water.get("route_fen", {}).items()},
            max_amount_fen=int(raw.get("max_amount_fen", 1_000_000)),
        )

    def price(self, tap: Tap) -> tuple[int, int]:
        """(result, fare_fen) for a tap on an active card, before the balance check."""
        kind = tap.kind
        if kind == _BUS:
            route = tap.route
            if route <= 0:
                return _BAD_TAP, 0
            return _OK, self._bus_fare_fen.get(route, self._bus_default_fare_fen)
        if kind in _AMOUNT_KINDS:
            if not 0 < tap.amount_fen <= self.max_amount_fen:
                return _BAD_TAP, 0
            return _OK, tap.amount_fen
        if kind == _WATER_BUS:
            if tap.route <= 0:
                return _BAD_TAP, 0
            return _OK, self.water_bus_route_fen.get(tap.route, self.water_bus_default_fen)
        if kind in _KNOWN_KINDS:
            return int(Result.KIND_NOT_SUPPORTED), 0
        return _BAD_TAP, 0
