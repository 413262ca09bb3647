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

_AMOUNT_KINDS = frozenset((TapKind.TAXI, TapKind.MERCHANT, TapKind.PETROL))


@dataclass(frozen=True)
class FareTable:
    version: int = 1
    bus_card_percent: int = 91
    bus_default_base_fen: int = 200
    bus_route_base_fen: Mapping[int, int] = field(default_factory=dict)
    water_bus_default_fen: int = 300
    water_bus_route_fen: Mapping[int, int] = field(default_factory=dict)
    max_amount_fen: int = 1_000_000  # one POS debit may not exceed 10,000 yuan

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
        if kind == TapKind.BUS:
            if tap.route <= 0:
                return Result.BAD_TAP, 0
            base = self.bus_route_base_fen.get(tap.route, self.bus_default_base_fen)
            return Result.OK, percent_of_fen(base, self.bus_card_percent)
        if kind in _AMOUNT_KINDS:
            if not 0 < tap.amount_fen <= self.max_amount_fen:
                return Result.BAD_TAP, 0
            return Result.OK, tap.amount_fen
        if kind == TapKind.WATER_BUS:
            if tap.route <= 0:
                return Result.BAD_TAP, 0
            return Result.OK, self.water_bus_route_fen.get(tap.route, self.water_bus_default_fen)
        if kind in TapKind._value2member_map_:
            return Result.KIND_NOT_SUPPORTED, 0
        return Result.BAD_TAP, 0
