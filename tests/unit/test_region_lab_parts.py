"""The region lab's pure parts: clearing deliveries and their refusals, the audit's verdicts,
the percentile and the report page (no platform, no database)."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.clearing.wire import report_json
from citycard.domain.clearing import ClearingHouse
from citycard.domain.clearing_records import (
    ClearingCode,
    ClearingRecord,
    SettlementReport,
    Statement,
    record_id_of,
)
from citycard.interop.store import remote_terminal_id
from citycard.region.audit import (
    Books,
    Verdict,
    audit,
    check_next_window,
    check_suspension,
    check_unknown_card,
)
from citycard.region.cities import CitySpec
from citycard.region.clearing import (
    INTERCHANGE_BP,
    Answer,
    Delivery,
    bad_deliveries,
    delivery,
    next_window,
    report_of,
)
from citycard.region.report import render_html
from citycard.region.summary import percentile
from citycard.region.traffic import TapRecord

WINDOW = "2026-12-07"


def spec(i: int) -> CitySpec:
    return CitySpec(i, f"C{i:02d}", 900100 + i, f"s{i}", 0, bytes([i]) * 32)


def card(prefix: int, serial: int) -> int:
    return (prefix * 10**10 + serial) * 10  # the check digit does not matter to the house


def rec(acq: CitySpec, iss: CitySpec, tid: int, seq: int, fen: int) -> ClearingRecord:
    return ClearingRecord(record_id_of(acq.code, tid, seq), iss.code, acq.code, card(iss.prefix, seq), fen, "online",
                          WINDOW, tid, seq, "20261207020000")


class PureHouse:
    """PureHouse's calls on the pure core, in memory (the lab itself speaks HTTP to the
    service, tests/e2e/test_region_lab.py)."""

    def __init__(self, specs: list[CitySpec]) -> None:
        self.core = ClearingHouse(retain_windows=7)
        for s in specs:
            self.core.register(s.code, s.key.public_key(), 100_000_000, INTERCHANGE_BP, (str(s.prefix),))

    def deliver(self, d: Delivery) -> Answer:
        got = self.core.ingest(d.sender, d.window, d.manifest, d.signature, d.files)
        return Answer(ClearingCode(got.code).name, got.reason, got.accepted, len(got.rejected))

    def close(self, window: str) -> SettlementReport | None:
        return self.core.close(window).report

    def statements(self, cities: list[str], window: str) -> dict[str, Statement | None]:
        return {c: self.core.statement(c, window) for c in cities}


def books_of(specs: list[CitySpec], taps: list[TapRecord]) -> dict[str, Books]:
    """Books as the platforms would keep them for these OK taps: one journal row each at the
    issuer (acquirers hold slots 0..), one clearing record each at the acquirer."""
    books = {s.code: Books(s.code, {}, {o.code: o.index for o in specs}, Counter(), {}, [], {}, True) for s in specs}
    by_code = {s.code: s for s in specs}
    for t in taps:
        key = (remote_terminal_id(by_code[t.acquirer].index, t.terminal_id), t.seq)
        books[t.issuer].remote_journal[key] += 1
        books[t.issuer].remote_amounts[key] = t.fare_fen
        books[t.acquirer].records.append(rec(by_code[t.acquirer], by_code[t.issuer], t.terminal_id, t.seq, t.fare_fen))
    return books


def cleared(specs: list[CitySpec], books: dict[str, Books]) -> tuple[PureHouse, int]:
    house = PureHouse(specs)
    n = 0
    for s in specs:
        n += house.deliver(delivery(s.key, s.code, WINDOW, books[s.code].records)).cleared
    return house, n


def run_audit(specs: list[CitySpec], taps: list[TapRecord], books: dict[str, Books]) -> Verdict:
    house, n = cleared(specs, books)
    report = house.close(WINDOW)
    outage = {"standins_for_down_city": 1}
    refusals = [{"refused": True, "code": "X", "expected": "X", "changed_nothing": True}]
    return audit(taps, books, report, dict(house.statements([s.code for s in specs], WINDOW)), refusals, outage, n,
                 INTERCHANGE_BP)


taps_strategy = st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2000)), min_size=1,
                         max_size=40)


@settings(max_examples=25, deadline=None)
@given(taps_strategy)
def test_books_that_agree_pass_and_positions_sum_to_zero(raw: list[tuple[int, int, int]]) -> None:
    specs = [spec(i) for i in range(1, 4)]
    taps = [TapRecord(f"C{a:02d}", f"C{i:02d}", 1001, n, 0, 0, fen, 0.0, 1.0)
            for n, (a, i, fen) in enumerate(raw, start=1) if a != i]
    if not taps:
        return
    v = run_audit(specs, taps, books_of(specs, taps))
    assert v.checks["multilateral_positions_sum_to_zero"]
    assert v.checks["each_city_books_equal_clearing_statement"], v.problems
    assert v.checks["cross_city_taps_charged_exactly_once"] and v.checks["no_issuer_charge_without_clearing_record"]


def test_a_double_charge_and_a_missing_record_fail_the_audit() -> None:
    specs = [spec(1), spec(2)]
    taps = [TapRecord("C01", "C02", 1001, 1, 0, 0, 200, 0.0, 1.0), TapRecord("C02", "C01", 1001, 2, 0, 0, 300, 0.0, 1.0)]
    books = books_of(specs, taps)
    key = next(iter(books["C02"].remote_journal))
    books["C02"].remote_journal[key] = 2  # charged twice at the issuer
    books["C02"].records.clear()  # the acquirer lost its record
    v = run_audit(specs, taps, books)
    assert not v.ok
    assert not v.checks["cross_city_taps_charged_exactly_once"]
    assert not v.checks["no_issuer_charge_without_clearing_record"]
    assert not v.checks["each_city_books_equal_clearing_statement"]
    assert v.problems


def test_bad_deliveries_are_refused_for_their_reason_and_change_nothing() -> None:
    specs = [spec(1), spec(2)]
    taps = [TapRecord("C01", "C02", 1001, 1, 0, 0, 200, 0.0, 1.0)]
    books = books_of(specs, taps)
    house = PureHouse(specs)
    good = delivery(specs[0].key, "C01", WINDOW, books["C01"].records)
    before = house.statements(["C01", "C02"], WINDOW)
    answers = {what: house.deliver(d).code for what, d in bad_deliveries(good, specs[0].key, specs[1].key)}
    assert answers == {"wrong sum": "BAD_MANIFEST", "forged signature": "BAD_SIGNATURE"}
    assert house.statements(["C01", "C02"], WINDOW) == before
    assert house.deliver(good).code == "OK"
    after = house.statements(["C01", "C02"], WINDOW)
    assert house.deliver(good).code == "DUPLICATE_FILE"
    assert house.statements(["C01", "C02"], WINDOW) == after


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=200), st.floats(1, 100))
@settings(max_examples=50, deadline=None)
def test_percentile_is_an_element_at_or_above_its_share(values: list[float], p: float) -> None:
    xs = sorted(values)
    v = percentile(xs, p)
    assert v in xs
    assert sum(1 for x in xs if x <= v) >= p / 100 * len(xs)


def test_report_page_without_data_says_so() -> None:
    page = render_html({"ok": False})
    assert "FAILED" in page and page.count("no data") == 3


def test_a_verdict_is_one_chargeback_in_the_next_window_and_the_report_survives_json() -> None:
    specs = [spec(1), spec(2)]
    taps = [TapRecord("C01", "C02", 1001, 1, 0, 0, 1000, 0.0, 1.0), TapRecord("C01", "C02", 1001, 2, 0, 0, 300, 0.0, 1.0)]
    books = books_of(specs, taps)
    house = PureHouse(specs)
    assert house.deliver(delivery(specs[0].key, "C01", WINDOW, books["C01"].records)).cleared == 2
    first_raw = house.close(WINDOW)
    assert first_raw is not None
    first = report_of(report_json(first_raw))
    r = books["C01"].records[0]
    reason = "TAC does not check"
    assert house.core.reject("C02", r.record_id, reason).code == ClearingCode.OK
    again = house.core.reject("C02", r.record_id, reason).code.name
    second_raw = house.close(next_window(WINDOW))
    assert second_raw is not None
    second = report_of(report_json(second_raw))
    assert second.statements == second_raw.statements and second.multilateral == second_raw.multilateral
    cb = {"code": "OK", "again_code": again, "issuer": "C02", "acquirer": "C01", "record_id": r.record_id,
          "amount_fen": r.amount_fen, "reason": reason}
    v = run_audit(specs, taps, books)
    check_next_window(v, first, second, cb, INTERCHANGE_BP)
    assert v.checks["verdict_charged_back_once_in_next_window"], v.problems
    # the chargeback counted in the first window too, or a wrong amount, fails
    for bad in ({**cb, "amount_fen": r.amount_fen + 1}, {**cb, "again_code": "OK"}):
        v2 = run_audit(specs, taps, books)
        check_next_window(v2, first, second, bad, INTERCHANGE_BP)
        assert not v2.checks["verdict_charged_back_once_in_next_window"]
    v3 = run_audit(specs, taps, books)
    check_next_window(v3, second, second, cb, INTERCHANGE_BP)
    assert not v3.checks["verdict_charged_back_once_in_next_window"]


SUSPENSION = {"house": ["C02"], "city": "C02", "desks_saw_it": True, "desks": {"C01": ["C02"], "C02": []},
              "link_down_taps": 3, "refused": 3, "stood_in_meanwhile": 0,
              "lifted": {"settled": ["C02"], "house_after": [], "desks_lifted": True,
                         "answers": {"C02/2026-12-07": "OK"}}}


def test_the_unknown_card_and_suspension_checks_can_fail() -> None:
    good = {"delivery_code": "OK", "accepted": 3, "own_records": 3, "record_id": "C01:9:1",
            "rejected": [{"record_id": "C01:9:1", "code": "UNKNOWN_ISSUER", "reason": "outside"}]}
    v = run_audit([spec(1), spec(2)], [], books_of([spec(1), spec(2)], []))
    check_unknown_card(v, good)
    check_suspension(v, SUSPENSION, ["C01", "C02"])
    assert v.checks["unknown_card_record_rejected_alone"]
    names = ("suspension_happened", "suspension_polled_by_every_desk", "suspended_issuer_refused_standin",
             "settlement_lifted_suspension")
    assert all(v.checks[n] for n in names)
    check_unknown_card(v, {**good, "accepted": 2})
    assert not v.checks["unknown_card_record_rejected_alone"]
    bad = [("suspension_happened", {**SUSPENSION, "house": []}),
           ("suspension_polled_by_every_desk", {**SUSPENSION, "desks": {"C01": [], "C02": []}}),
           ("suspended_issuer_refused_standin", {**SUSPENSION, "refused": 2}),
           ("suspended_issuer_refused_standin", {**SUSPENSION, "stood_in_meanwhile": 1}),
           ("settlement_lifted_suspension", {**SUSPENSION, "lifted": {**SUSPENSION["lifted"], "house_after": ["C02"]}}),
           ("settlement_lifted_suspension", {**SUSPENSION, "lifted": {**SUSPENSION["lifted"], "desks_lifted": False}})]
    for name, s in bad:
        w = run_audit([spec(1), spec(2)], [], books_of([spec(1), spec(2)], []))
        check_suspension(w, s, ["C01", "C02"])
        assert not w.checks[name], name


def test_a_home_tap_journaled_twice_or_not_at_all_fails_the_audit() -> None:
    specs = [spec(1), spec(2)]
    taps = [TapRecord("C01", "C01", 1001, 1, 0, 0, 200, 0.0, 1.0), TapRecord("C01", "C01", 1001, 2, 0, 0, 200, 0.0, 1.0)]
    books = books_of(specs, [])
    books["C01"].own_journal.update({(1001, 1): 1, (1001, 2): 1})
    books["C01"].own_amounts.update({(1001, 1): 200, (1001, 2): 200})
    assert run_audit(specs, taps, books).checks["home_taps_journaled_exactly_once"]
    books["C01"].own_journal[(1001, 2)] = 2  # the resend after the restart charged again
    assert not run_audit(specs, taps, books).checks["home_taps_journaled_exactly_once"]
    books["C01"].own_journal[(1001, 2)] = 0  # answered OK, lost in the restart
    assert not run_audit(specs, taps, books).checks["home_taps_journaled_exactly_once"]


def test_link_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    from citycard.region.cities import LINK_PORTS, plan_specs

    ports = [s.link_port for s in plan_specs(20, "p")]
    assert len(set(ports)) == 20 and all(LINK_PORTS[0] <= p < LINK_PORTS[1] < 32_768 for p in ports)


def test_a_reversed_charge_owes_no_clearing_record():
    """An issuer's ``linkrev:`` top-up (a voided charge credited back) names the journal key the
    audit leaves out of its payable; an acquirer it has no slot for is ignored."""
    import asyncio

    from citycard.interop.server import reversal_key
    from citycard.region.audit import reversed_charges

    class Conn:
        async def fetch(self, sql: str) -> list[dict[str, str]]:
            assert "linkrev:" in sql
            return [{"op_key": reversal_key("C02", 5, 7)}, {"op_key": reversal_key("C09", 1, 1)}]

    got = asyncio.run(reversed_charges(Conn(), {"C02": 3}))
    assert got == [(remote_terminal_id(3, 5), 7)]
