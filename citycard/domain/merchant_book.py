"""Merchants of the merchant alliance registered through card services, as rule data.

The fare table's ``[versions.merchants]`` are the merchants a city ships with; a merchant
registered later (docs/api.md, "Merchants") comes from Postgres as :class:`MerchantTerms`,
one per (merchant, effective-from time), and is merged here into the FareTables every version
shares. A tap is priced by the terms in force at the tap's own time, as fare-table versions are;
before a merchant's first terms the fare table's entry (if any) applies. Terms are never changed
once written (a change is a new entry from a later time), so merging is idempotent and order-free:
shards may get them pushed in any order, more than once, and from a reload.
"""

import bisect
from collections.abc import Iterable

from msgspec import Struct

from .tables import CompiledVersion, FareTables, Merchant

MAX_TERMS_PER_MERCHANT = 1000  # discount changes kept per merchant (each is one bisect step)


class MerchantTerms(Struct, frozen=True, array_like=True):
    """A registered merchant's terms from ``from_ms`` on (Unix ms)."""

    merchant_id: int
    from_ms: int
    name: str
    category: str
    member_discount_percent: int


def merge(tables: FareTables, terms: Iterable[MerchantTerms]) -> int:
    """Merge terms into ``tables`` (all its versions see them); returns how many were new."""
    new = 0
    book = tables.registered
    for t in terms:
        if not 0 <= t.member_discount_percent <= 100:
            raise ValueError(f"merchant {t.merchant_id}: discount {t.member_discount_percent} not in 0..100")
        starts, merchants = book.setdefault(t.merchant_id, ([], []))
        i = bisect.bisect_left(starts, t.from_ms)
        entry = Merchant(name=t.name, category=t.category, member_discount_percent=t.member_discount_percent)
        if i < len(starts) and starts[i] == t.from_ms:
            merchants[i] = entry  # the same entry again (a retried push)
            continue
        if len(starts) >= MAX_TERMS_PER_MERCHANT:
            raise ValueError(f"merchant {t.merchant_id}: more than {MAX_TERMS_PER_MERCHANT} terms")
        starts.insert(i, t.from_ms)
        merchants.insert(i, entry)
        new += 1
    return new


def merchant_at(ver: CompiledVersion, merchant_id: int, time_ms: int) -> Merchant | None:
    """The merchant's terms in force at ``time_ms``: the registered ones once in force, else
    the fare table's (None: not a merchant the rules know)."""
    found = ver.registered.get(merchant_id)
    if found is not None:
        starts, merchants = found
        i = bisect.bisect_right(starts, time_ms) - 1
        if i >= 0:
            return merchants[i]
    return ver.merchants.get(merchant_id)
