"""The city's books against the clearing house's statement, pure (persistence/clearing_books.py
``reconcile_statement``): what the city sent against what the house cleared of it, and the
statement's net against its parts."""

from citycard.domain.clearing_records import ClearingRecord
from citycard.persistence.clearing_books import FIGURES, reconcile_statement


def _rec(seq: int, amount: int) -> ClearingRecord:
    return ClearingRecord(f"HZ:11:{seq}", "SH", "HZ", 3100000000042 + seq, amount, "online", "2026-12-07", 11, seq,
                          "20261207081500")


def _statement(**given: int) -> dict[str, int]:
    s = dict.fromkeys(FIGURES, 0) | given
    s["net_fen"] = given.get("net_fen", s["receivable_gross_fen"] - s["acquirer_fees_fen"] - s["payable_gross_fen"]
                             + s["issuer_fees_fen"] + s["chargebacks_received_fen"] - s["chargebacks_paid_fen"])
    return s


def test_equal_books_give_no_discrepancy() -> None:
    st = _statement(receivable_gross_fen=1250, receivable_records=2, acquirer_fees_fen=12, payable_gross_fen=401,
                    payable_records=1, issuer_fees_fen=2, chargebacks_paid_fen=247)
    assert reconcile_statement(st, [_rec(1, 1000), _rec(2, 250)]) == []


def test_a_record_the_house_did_not_clear_is_listed() -> None:
    st = _statement(receivable_gross_fen=1000, receivable_records=1)
    (d,) = reconcile_statement(st, [_rec(1, 1000), _rec(2, 250)])
    assert (d.what, d.expected_fen, d.found_fen, d.expected_count, d.found_count) == (
        "acquirer_cleared", 1250, 1000, 2, 1)


def test_a_net_that_is_not_its_parts_is_listed() -> None:
    st = _statement(receivable_gross_fen=1000, receivable_records=1, net_fen=999)
    (d,) = reconcile_statement(st, [_rec(1, 1000)])
    assert (d.what, d.expected_fen, d.found_fen) == ("statement_net", 1000, 999)
