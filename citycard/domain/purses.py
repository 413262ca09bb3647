"""A holder's purses and the order in which they fund a payment.

Funding order: the most restricted and soonest-expiring purse first (medical account, voucher,
allowance), then the city-pass e-purse, then the general account purse. A payment may be split
across purses; the result says which purses paid how much.
"""

from enum import IntEnum

from .taps import TapKind


class Purse(IntEnum):
    EPURSE = 0  # city-pass stored value: offline-style transit and small payments
    GENERAL = 1  # citizen-card online account
    VOUCHER = 2  # consumer vouchers: merchant categories only, until expiry
    ALLOWANCE = 3  # transport allowance: transit and fuel only
    MEDICAL = 4  # personal medical account: medical bills only
    DEPOSIT = 5  # held deposits (bike, library): the holder's money, not spendable


N_PURSES = len(Purse)
PURSE_NAMES = tuple(p.name.lower() for p in Purse)

_TRANSIT = (Purse.ALLOWANCE, Purse.EPURSE)
# Which purses may pay for each kind, in funding order. MEDICAL's purse fallbacks are added
# only where the holder allows it (see ``funding_order``).
_ORDER: dict[int, tuple[Purse, ...]] = {
    TapKind.BUS: _TRANSIT,
    TapKind.WATER_BUS: _TRANSIT,
    TapKind.BIKE_RENT: _TRANSIT,
    TapKind.BIKE_RETURN: _TRANSIT,
    TapKind.TAXI: _TRANSIT,
    TapKind.PARKING_ENTRY: _TRANSIT,
    TapKind.PARKING_EXIT: _TRANSIT,
    TapKind.PETROL: (Purse.ALLOWANCE, Purse.EPURSE, Purse.GENERAL),
    TapKind.MERCHANT: (Purse.VOUCHER, Purse.EPURSE, Purse.GENERAL),
    TapKind.PARK_ENTRY: (Purse.EPURSE, Purse.GENERAL),
    TapKind.LIBRARY: (Purse.EPURSE, Purse.GENERAL),
    TapKind.MEDICAL: (Purse.MEDICAL,),
}
_MEDICAL_FALLBACK = (Purse.MEDICAL, Purse.GENERAL, Purse.EPURSE)
_MEDICAL_KIND = int(TapKind.MEDICAL)
DEPOSIT_SOURCES = (Purse.EPURSE, Purse.GENERAL)


def funding_order(kind: int, *, medical_from_purse: bool = False) -> tuple[Purse, ...]:
    if medical_from_purse and kind == _MEDICAL_KIND:
        return _MEDICAL_FALLBACK
    return _ORDER.get(kind, ())


def fund(
    purses: list[int],
    amount_fen: int,
    order: tuple[Purse, ...],
    usable: frozenset[Purse] | None = None,
) -> list[int] | None:
    """Deltas per purse (negative = debit) that pay ``amount_fen`` in ``order``, or None if the
    usable purses together hold too little. ``usable`` excludes expired or restricted purses."""
    deltas = [0] * N_PURSES
    left = amount_fen
    for p in order:
        if left <= 0:
            break
        if usable is not None and p not in usable:
            continue
        take = min(purses[p], left)
        if take > 0:
            deltas[p] = -take
            left -= take
    return deltas if left <= 0 else None
