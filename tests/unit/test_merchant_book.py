"""Registered merchants as rule data (domain/merchant_book.py): the member discount applies
from the terms' own time, never before, on both the general and the ledger's inline path."""

import pytest

from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import App, CardState, CardStatus, Category, make_card_no
from citycard.domain.ledger import Ledger
from citycard.domain.merchant_book import MAX_TERMS_PER_MERCHANT, MerchantTerms, merchant_at, merge
from citycard.domain.results import Result
from citycard.domain.rules import decide
from citycard.domain.tables import iso_to_ms
from citycard.domain.taps import Tap, TapKind

NOON = iso_to_ms("2026-03-01T12:00:00+08:00")
HOUR = 3_600_000
MEMBER = int(App.EPURSE | App.ONLINE | App.MERCHANT_MEMBER)
PLAIN = int(App.EPURSE | App.ONLINE)
SHOP = 7001  # not in the shipped fare table


def _card(serial: int, apps: int, epurse: int = 100_000) -> CardState:
    return CardState(make_card_no(serial, 330100), CardStatus.ACTIVE, Category.ADULT, epurse, apps=apps)


def _terms(discount: int, from_ms: int, merchant: int = SHOP, category: str = "books") -> MerchantTerms:
    return MerchantTerms(merchant, from_ms, "Corner books", category, discount)


def _tap(card: CardState, t: int, amount: int, seq: int = 1, merchant: int = SHOP) -> Tap:
    return Tap(5, seq, card.card_no, t, int(TapKind.MERCHANT), route=merchant, amount_fen=amount)


def test_discount_applies_from_its_time_on_and_changes_are_not_retroactive() -> None:
    tables = shipped_tables()
    assert merge(tables, [_terms(20, NOON), _terms(5, NOON + HOUR)]) == 2
    assert merge(tables, [_terms(20, NOON)]) == 0  # a retried push changes nothing
    member, plain = _card(1, MEMBER), _card(2, PLAIN)
    cases = [(NOON - 1, member, 1000), (NOON, member, 800), (NOON + HOUR - 1, member, 800),
             (NOON + HOUR, member, 950), (NOON, plain, 1000), (NOON + HOUR, plain, 1000)]
    for t, card, fare in cases:
        d = decide(tables, card, _tap(card, t, 1000))
        assert (d.result, d.fare_fen, d.base_fen) == (Result.OK, fare, 1000), (t, card.apps, d)


def test_the_ledger_inline_path_agrees() -> None:
    tables = shipped_tables()
    merge(tables, [_terms(20, NOON)])
    ledger = Ledger(0, tables)
    member, plain = _card(1, MEMBER), _card(2, PLAIN)
    ledger.add_card(member)
    ledger.add_card(plain)
    taps = [_tap(member, NOON - 1, 1000, 1), _tap(member, NOON, 1000, 2), _tap(plain, NOON, 1000, 3),
            _tap(member, NOON, 999, 4)]
    outcomes, rows = ledger.apply(taps, NOON)
    assert [o.fare_fen for o in outcomes] == [1000, 800, 1000, 799]  # 799.2 rounds to 799
    assert [(r.request_fen, r.amount_fen) for r in rows] == [(1000, 1000), (1000, 800), (1000, 1000), (999, 799)]


def test_registered_terms_take_over_a_fare_table_merchant_and_its_category() -> None:
    tables = shipped_tables()
    ver = tables.at(NOON)
    assert ver is not None
    assert merchant_at(ver, 9001, NOON).member_discount_percent == 5  # type: ignore[union-attr]
    merge(tables, [_terms(30, NOON, merchant=9001, category="dining")])
    assert merchant_at(ver, 9001, NOON - 1).member_discount_percent == 5  # type: ignore[union-attr]
    found = merchant_at(ver, 9001, NOON)
    assert found is not None and (found.member_discount_percent, found.category) == (30, "dining")
    assert merchant_at(ver, SHOP, NOON) is None


def test_bounds() -> None:
    tables = shipped_tables()
    with pytest.raises(ValueError, match="0..100"):
        merge(tables, [_terms(101, NOON)])
    merge(tables, [_terms(1, NOON + i) for i in range(MAX_TERMS_PER_MERCHANT)])
    with pytest.raises(ValueError, match="more than"):
        merge(tables, [_terms(1, NOON - 1)])
