"""The region lab's check of what each city booked from the house (region/books_import.py):
it passes on books equal to the house and fails on each way they can differ."""

import dataclasses

from citycard.domain.clearing_records import Chargeback, SettlementReport, Statement
from citycard.persistence.clearing_books import ChargebackLine, ImportCode, Imported
from citycard.region.audit import Verdict
from citycard.region.books_import import check_imported

W1, W2 = "2026-12-06", "2026-12-07"
CB = Chargeback("rec-1", "C01", "C02", 300, "k", "bad TAC")


def _statement(city: str, window: str, net_fen: int) -> Statement:
    return Statement(city, window, net_fen=net_fen)


def _report(window: str, charged_back: tuple[Chargeback, ...]) -> SettlementReport:
    return SettlementReport(window, 0, len(charged_back), (), {}, {}, {}, frozenset(), charged_back)


def _imported(window: str, city: str, net_fen: int, lines: list[ChargebackLine]) -> Imported:
    figures = dataclasses.asdict(_statement(city, window, net_fen))
    figures = {k: v for k, v in figures.items() if k not in ("city", "window")}
    return Imported(ImportCode.OK, window, city, figures, 0, 0, lines)


def _line(role: str) -> ChargebackLine:
    return ChargebackLine(CB.record_id, role, CB.issuer, CB.acquirer, CB.amount_fen, CB.reason)


def _case(net_c01_w2: int = -5, acquirer_lines: int = 1, issuer_lines: int = 1, discrepancy: bool = False,
          code: ImportCode = ImportCode.OK) -> Verdict:
    imported = {
        "C01": {W1: _imported(W1, "C01", 10, []), W2: _imported(W2, "C01", net_c01_w2, [_line("issuer")] * issuer_lines)},
        "C02": {W1: _imported(W1, "C02", -10, []), W2: _imported(W2, "C02", 5, [_line("acquirer")] * acquirer_lines)},
    }
    if discrepancy:
        from citycard.persistence.clearing_books import BookDiscrepancy

        imported["C02"][W1].discrepancies.append(BookDiscrepancy("acquirer_cleared"))
    imported["C01"][W1] = dataclasses.replace(imported["C01"][W1], code=code)
    statements = {W1: {"C01": _statement("C01", W1, 10), "C02": _statement("C02", W1, -10)},
                  W2: {"C01": _statement("C01", W2, -5), "C02": _statement("C02", W2, 5)}}
    v = Verdict()
    check_imported(v, imported, statements, [_report(W1, ()), _report(W2, (CB,))])
    return v


def test_books_equal_to_the_house_pass():
    v = _case()
    assert v.ok, v.problems


def test_each_difference_fails():
    assert not _case(net_c01_w2=-4).checks["each_city_booked_the_house_figures"]
    assert not _case(discrepancy=True).checks["each_city_booked_the_house_figures"]
    assert not _case(code=ImportCode.CONFLICT).checks["each_city_booked_the_house_figures"]
    assert not _case(acquirer_lines=0).checks["chargebacks_booked_once_at_acquirer_and_issuer"]
    assert not _case(acquirer_lines=2).checks["chargebacks_booked_once_at_acquirer_and_issuer"]
    assert not _case(issuer_lines=0).checks["chargebacks_booked_once_at_acquirer_and_issuer"]
