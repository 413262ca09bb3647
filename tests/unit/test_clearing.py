"""The regional clearing house's core (issue 15, item 3): every refusal with its code and reason,
a refused delivery changing nothing, close idempotent, chargebacks in the next window once,
cap suspensions, and by property: positions and statements sum to 0 fen, each record counted
in exactly one window, each city's statement equal to its own books."""

import hashlib
import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.domain.clearing import ClearingHouse
from citycard.domain.clearing_records import ClearingCode, ClearingRecord, record_id_of, window_key
from citycard.domain.netting import interchange_fen
from citycard.domain.offline import IssuerKeys, expected_tac, tac_ok
from citycard.protocols import clearing_files
from citycard.protocols.settlement_files import FileRefused, manifest, sign

C = ClearingCode
KEYS = {c: Ed25519PrivateKey.from_private_bytes(bytes([n + 1]) * 32) for n, c in enumerate("ABCDEF")}
PREFIX = {c: str(310 + n) for n, c in enumerate("ABCDEF")}
RATE_BP = {"A": 100, "B": 50, "C": 0, "D": 25, "E": 60, "F": 10}
W1, W2, W3 = "2026-12-07", "2026-12-08", "2026-12-09"


def house(cities: str = "ABC", cap_fen: int = 10**9, retain: int = 7) -> ClearingHouse:
    h = ClearingHouse(retain_windows=retain)
    for c in cities:
        h.register(c, KEYS[c].public_key(), cap_fen, RATE_BP[c], (PREFIX[c],))
    return h


def rec(acq: str, iss: str, seq: int, amount: int, window: str = W1, kind: str = "online",
        card: int | None = None) -> ClearingRecord:
    extra = dict(offline_counter=seq % 60_000, balance_after_fen=900, transaction_type=9,
                 tac=b"\x01\x02\x03\x04") if kind == "offline" else {}
    return ClearingRecord(record_id_of(acq, 1001, seq), iss, acq, card or int(PREFIX.get(iss, "999") + "0000000042"),
                          amount, kind, window, 1001, seq, window_key(window) + "081500", **extra)  # type: ignore[arg-type]


def delivery(acq: str, window: str, records: list[ClearingRecord], key: Ed25519PrivateKey | None = None,
             one_file: bool = False) -> tuple[str, str, bytes, bytes, dict[str, bytes]]:
    by_issuer: dict[str, list[ClearingRecord]] = {}
    for r in records:  # one file per issuer (the house's bulk path), or all in one (its per-record path)
        by_issuer.setdefault("all" if one_file else r.issuer, []).append(r)
    files = {f"{acq}-to-{i}.csv": clearing_files.render_csv(rs) for i, rs in by_issuer.items()}
    m = manifest(acq, window, files, clearing_files.tally)
    return acq, window, m, sign(key or KEYS[acq], m), files


def statements(h: ClearingHouse, window: str, cities: str = "ABC") -> list[object]:
    return [h.statement(c, window) for c in cities]


# -- files and records ----------------------------------------------------------------------
def test_records_round_trip_through_the_csv_and_bounds_are_named() -> None:
    rs = [rec("B", "A", 1, 250), rec("B", "C", 2, 99, kind="offline")]
    data = clearing_files.render_csv(rs)
    assert clearing_files.parse_csv(data, "x.csv") == rs
    assert clearing_files.tally(data, "x.csv") == (2, 349)
    assert data.splitlines()[2].endswith(b",9,01020304")
    with pytest.raises(ValueError, match="amount_fen must be 1"):
        replace(rs[0], amount_fen=0)
    with pytest.raises(ValueError, match="record_id"):
        replace(rs[0], record_id="B:1001:99")
    with pytest.raises(ValueError, match="tac is 4 bytes"):
        replace(rs[1], tac=b"\x01")
    with pytest.raises(ValueError, match="not after window"):
        replace(rs[0], when="20261208000000")
    with pytest.raises(ValueError, match="online record carries no"):
        replace(rs[0], tac=b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        window_key("2026-13-01")


def test_an_issuer_checks_the_tac_of_an_offline_record_from_the_file() -> None:
    keys = IssuerKeys.of_hex("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F",
                             "F0E0D0C0B0A090807060504030201000")
    r = rec("B", "A", 7, 180, kind="offline")
    dtk = keys.dtk(r.card_no)
    good = replace(r, tac=expected_tac(dtk, r.offline_record()))
    (back,) = clearing_files.parse_csv(clearing_files.render_csv([good]), "B-to-A.csv")
    assert tac_ok(dtk, back.offline_record())
    assert not tac_ok(dtk, replace(back, amount_fen=181).offline_record())  # the issuer rejects this one


records = st.builds(
    lambda acq, iss, tid, seq, card, amount, when, off, ctr, bal, tt, tac: ClearingRecord(
        record_id_of(acq, tid, seq), iss, acq, card, amount, "offline" if off else "online", W1, tid, seq,
        f"2026120{when}123000", *((ctr, bal, tt, tac) if off else ())),
    st.sampled_from("AB"), st.sampled_from(["A", "C", "x-9_Z"]), st.integers(1, 2**48 - 1), st.integers(0, 2**32 - 1),
    st.integers(1, 10**20 - 1), st.integers(1, 2**31 - 1), st.integers(1, 7), st.booleans(), st.integers(0, 65535),
    st.integers(0, 2**31 - 1), st.integers(0, 255), st.binary(min_size=4, max_size=4))


@settings(max_examples=60, deadline=None)
@given(rs=st.lists(records, max_size=8))
def test_the_fast_column_parser_reads_what_the_record_type_writes(rs: list[ClearingRecord]) -> None:
    data = clearing_files.render_csv(rs)
    cols = clearing_files.parse_columns(data, "f.csv")
    assert cols.record_ids == [r.record_id for r in rs] and cols.issuers == [r.issuer for r in rs]
    assert cols.amounts == [r.amount_fen for r in rs] and cols.cards == [str(r.card_no) for r in rs]
    assert cols.whens == [r.when for r in rs] and clearing_files.parse_csv(data, "f.csv") == rs


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("amount_fen", str(2**31), "amount_fen must be"), ("amount_fen", "0", "amount_fen must be"),
    ("terminal_id", str(2**48), "record_id must be"), ("offline_counter", "65536", "offline_counter"),
    ("transaction_type", "256", "transaction_type"), ("balance_after_fen", str(2**31), "balance_after_fen"),
    ("terminal_seq", str(2**32), "record_id must be"), ("tac", "0a0b0c", "tac"), ("card_no", "0123", "card_no"),
    ("record_id", "B:1001:2", "record_id must be"), ("acquirer", "C", "clears only its own"),
    ("window", W2, "the delivery's is"), ("kind", "online", "kind must be"), ("when", "2026120712", "when must be"),
    ("tac", "0A0B0C0D", "not canonical"), ("record_id", '"B:1001:1"', "not canonical")])
def test_a_row_out_of_bounds_refuses_its_file_with_the_reason(column: str, value: str, reason: str) -> None:
    r = rec("B", "A", 1, 100, kind="offline")
    fields = list(clearing_files.to_row(r))
    fields[clearing_files.COLUMNS.index(column)] = value
    if column in ("terminal_id", "terminal_seq"):
        fields[0] = record_id_of("B", int(fields[7]), int(fields[8]))
    data = clearing_files.render_csv([r]) + ",".join(fields).encode() + b"\n"
    with pytest.raises(FileRefused, match=reason):
        clearing_files.parse_columns(data, "B-to-A.csv", "B", W1)


def test_participants_are_registered_within_bounds() -> None:
    h = house("AB")
    key = KEYS["C"].public_key()
    with pytest.raises(ValueError, match="registered already"):
        h.register("A", key, 0, 0)
    with pytest.raises(ValueError, match="net_debit_cap_fen"):
        h.register("C", key, -1, 0)
    with pytest.raises(ValueError, match="rate_bp"):
        h.register("C", key, 0, 10_001)
    with pytest.raises(ValueError, match="city code"):
        h.register("C:1", key, 0, 0)
    with pytest.raises(ValueError, match="card_prefixes"):
        h.register("C", key, 0, 0, ("31x",))
    assert h.register("C", key, 0, 0).index == 2


# -- refusals of whole deliveries: each changes nothing ---------------------------------------
def test_a_delivery_clears_and_closes_to_the_fen() -> None:
    h = house()
    got = h.ingest(*delivery("B", W1, [rec("B", "A", 1, 1000), rec("B", "A", 2, 250, kind="offline"),
                                       rec("B", "C", 3, 999)]))
    assert (got.code, got.accepted, got.rejected) == (C.OK, 3, ())
    assert h.ingest(*delivery("A", W1, [rec("A", "B", 1, 401)])).accepted == 1
    closed = h.close(W1)
    assert closed.code == C.OK and closed.report is not None
    r = closed.report
    # A owes B 1250 less A's 1% (12 fen, rounded down once for the pair); C owes B 999 at 0%;
    # B owes A 401 less B's 0.5% (2 fen).
    assert r.bilateral == {("A", "B"): 1238 - 399, ("C", "B"): 999}
    assert r.multilateral == {"A": -839, "B": 839 + 999, "C": -999}
    b = r.statements["B"]
    assert (b.receivable_gross_fen, b.acquirer_fees_fen, b.payable_gross_fen, b.issuer_fees_fen, b.net_fen) == \
        (2249, 12, 401, 2, 2249 - 12 - 401 + 2)
    assert r.records == 4 and sum(s.net_fen for s in r.statements.values()) == 0


def test_a_delivery_twice_is_refused_the_same_or_another() -> None:
    h = house()
    d = delivery("B", W1, [rec("B", "A", 1, 100)])
    assert h.ingest(*d).code == C.OK
    before = statements(h, W1)
    again = h.ingest(*d)
    assert again.code == C.DUPLICATE_FILE and "the same delivery" in again.reason
    other = h.ingest(*delivery("B", W1, [rec("B", "A", 2, 100)]))
    assert other.code == C.DUPLICATE_FILE and "another delivery" in other.reason
    assert statements(h, W1) == before


def test_wrong_sums_changed_files_and_forged_signatures_are_refused() -> None:
    h = house()
    sender, window, m, sig, files = delivery("B", W1, [rec("B", "A", 1, 100), rec("B", "C", 2, 50)])
    body = json.loads(m)
    body["files"][0]["sum_fen"] += 1
    lying = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    got = h.ingest(sender, window, lying, sign(KEYS["B"], lying), files)
    assert got.code == C.BAD_MANIFEST and "the manifest says" in got.reason
    changed = {k: v.replace(b",100,", b",101,") for k, v in files.items()}
    got = h.ingest(sender, window, m, sig, changed)
    assert got.code == C.BAD_MANIFEST and "SHA-256" in got.reason
    assert h.ingest(sender, window, m, sign(KEYS["C"], m), files).code == C.BAD_SIGNATURE
    shapeless = b'["not", "a", "manifest"]'
    got = h.ingest(sender, window, shapeless, sign(KEYS["B"], shapeless), files)
    assert got.code == C.BAD_MANIFEST and "malformed" in got.reason
    assert h.ingest("Z", window, m, sig, files).code == C.UNKNOWN_SENDER
    c_signed = delivery("C", W1, [rec("B", "A", 1, 100)])  # C sends B's taps: not its own
    got = h.ingest(*c_signed)
    assert got.code == C.BAD_MANIFEST and "clears only its own taps" in got.reason
    # nothing of the above counted: the real delivery still clears in full
    assert statements(h, W1) == [None, None, None]
    assert h.ingest(sender, window, m, sig, files).accepted == 2


def test_the_wrong_window_is_refused() -> None:
    h = house()
    _, _, m, sig, files = delivery("B", W1, [rec("B", "A", 1, 100)])
    got = h.ingest("B", W2, m, sig, files)  # rows of W1 under a W2 delivery
    assert got.code == C.WRONG_WINDOW and "window '2026-12-07'" in got.reason
    m2 = manifest("B", W2, files, clearing_files.tally)
    got = h.ingest("B", W1, m2, sign(KEYS["B"], m2), files)
    assert got.code == C.WRONG_WINDOW and "manifest is for window" in got.reason
    assert h.ingest("B", "07/12/2026", m, sig, files).code == C.WRONG_WINDOW


def test_a_refused_file_changes_nothing_all_or_nothing() -> None:
    h = house()
    assert h.ingest(*delivery("A", W1, [rec("A", "B", 1, 300)])).code == C.OK
    before = statements(h, W1)
    good = rec("B", "A", 1, 100)
    sender, window, _, _, files = delivery("B", W1, [good, rec("B", "C", 2, 100)])
    files["B-to-C.csv"] = files["B-to-C.csv"].replace(b",online,", b",bus,")  # one bad row in the 2nd file
    m = manifest(sender, window, {k: v for k, v in files.items() if k != "B-to-C.csv"}, clearing_files.tally)
    body = json.loads(m)
    body["files"].append({"name": "B-to-C.csv", "records": 1, "sum_fen": 100,
                          "sha256": hashlib.sha256(files["B-to-C.csv"]).hexdigest()})
    m = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    got = h.ingest(sender, window, m, sign(KEYS["B"], m), files)
    assert got.code == C.BAD_MANIFEST and "B-to-C.csv line 2" in got.reason and "kind" in got.reason
    assert statements(h, W1) == before
    # B's good record was not marked cleared: B's corrected delivery takes it
    assert h.ingest(*delivery("B", W1, [good])).accepted == 1


# -- per-record rejections inside an accepted delivery ---------------------------------------
def test_unknown_issuers_prefixes_and_home_taps_are_rejected_per_record() -> None:
    h = house()
    got = h.ingest(*delivery("B", W1, [rec("B", "A", 1, 100), rec("B", "Z", 2, 100),
                                       rec("B", "A", 3, 100, card=999_000_000_000_1), rec("B", "B", 4, 100)]))
    assert got.code == C.OK and got.accepted == 1
    assert [(r.record_id, r.code) for r in got.rejected] == [
        ("B:1001:3", C.UNKNOWN_ISSUER), ("B:1001:4", C.HOME_TAP), ("B:1001:2", C.UNKNOWN_ISSUER)]
    assert "prefixes" in got.rejected[0].reason and "not a participant" in got.rejected[2].reason
    assert h.statement("A", W1) is not None and h.statement("A", W1).payable_gross_fen == 100  # type: ignore[union-attr]


def test_a_record_is_cleared_once_across_windows() -> None:
    h = house()
    r = rec("B", "A", 1, 100)
    assert h.ingest(*delivery("B", W1, [r, rec("B", "A", 2, 100)])).accepted == 2
    h.close(W1)
    got = h.ingest(*delivery("B", W2, [replace(r, window=W2), rec("B", "A", 3, 100, W2), rec("B", "A", 3, 100, W2)]))
    assert got.accepted == 1
    assert [(x.record_id, x.code) for x in got.rejected] == [("B:1001:1", C.DUPLICATE_RECORD),
                                                              ("B:1001:3", C.DUPLICATE_RECORD)]
    assert "cleared in window 2026-12-07" in got.rejected[0].reason and "twice" in got.rejected[1].reason
    got = h.ingest(*delivery("A", W1, [rec("A", "B", 9, 100)]))
    assert got.code == C.WINDOW_CLOSED


def test_a_record_twice_in_one_delivery_is_cleared_once() -> None:
    h = house()
    r = rec("B", "A", 1, 100)
    got = h.ingest(*delivery("B", W1, [r, r]))  # twice in one file
    assert (got.accepted, [x.code for x in got.rejected]) == (1, [C.DUPLICATE_RECORD])
    h2 = house()
    files = {name: clearing_files.render_csv([r]) for name in ("B-to-A-1.csv", "B-to-A-2.csv")}  # in two files
    m = manifest("B", W1, files, clearing_files.tally)
    got = h2.ingest("B", W1, m, sign(KEYS["B"], m), files)
    assert (got.accepted, [x.code for x in got.rejected]) == (1, [C.DUPLICATE_RECORD])
    assert h2.statement("A", W1).payable_gross_fen == 100  # type: ignore[union-attr]


def test_the_horizon_is_bounded_and_older_is_refused() -> None:
    h = house(retain=2)
    assert h.ingest(*delivery("B", W1, [rec("B", "A", 1, 100)])).code == C.OK
    assert h.ingest(*delivery("B", W2, [rec("B", "A", 2, 100, W2)])).code == C.OK
    got = h.ingest(*delivery("B", W3, [rec("B", "A", 3, 100, W3)]))
    assert got.code == C.HORIZON_FULL and "2026-12-07" in got.reason  # W1 still open
    h.close(W1)
    old_tap = replace(rec("B", "A", 1, 100), window=W3)  # tapped on W1's day: its id is dropped with W1
    got = h.ingest(*delivery("B", W3, [rec("B", "A", 3, 100, W3), old_tap]))
    assert got.accepted == 1 and [x.code for x in got.rejected] == [C.WINDOW_TOO_OLD]
    assert h.report(W1) is None
    assert h.ingest(*delivery("C", W1, [rec("C", "A", 1, 100)])).code == C.WINDOW_TOO_OLD
    assert h.close(W1).code == C.WINDOW_TOO_OLD
    assert h.reject("A", "B:1001:1", "bad TAC").code == C.UNKNOWN_RECORD


def test_a_full_window_refuses_the_delivery_and_opens_nothing() -> None:
    h = ClearingHouse(retain_windows=1, max_records_per_window=2)
    h.register("A", KEYS["A"].public_key(), 10**6, 0)
    h.register("B", KEYS["B"].public_key(), 10**6, 0)
    assert h.ingest(*delivery("B", W1, [rec("B", "A", 1, 100)])).code == C.OK
    h.close(W1)
    got = h.ingest(*delivery("B", W2, [rec("B", "A", n, 100, W2) for n in (2, 3, 4)]))
    assert got.code == C.WINDOW_FULL and "max_records_per_window=2" in got.reason
    assert h.report(W1) is not None and h.report(W2) is None  # W1 not dropped for a refused delivery


def test_a_tap_after_its_window_is_rejected() -> None:
    h = house()
    r = rec("B", "A", 1, 100, W2)
    # a file whose row says W1 but whose tap is on W2's day: built as CSV, since the record type refuses it
    row = ",".join(clearing_files.to_row(r)).replace(W2, W1).encode()
    files = {"B-to-A.csv": ",".join(clearing_files.COLUMNS).encode() + b"\n" + row + b"\n"}
    m = manifest("B", W1, files, clearing_files.tally)
    got = h.ingest("B", W1, m, sign(KEYS["B"], m), files)
    assert got.accepted == 0 and got.rejected[0].code == C.WRONG_WINDOW


# -- verdicts, closing, caps -----------------------------------------------------------------
def test_close_is_idempotent_and_a_chargeback_lands_in_the_next_window_once() -> None:
    h = house()
    h.ingest(*delivery("B", W1, [rec("B", "A", 1, 1000), rec("B", "A", 2, 500)]))
    assert h.reject("C", "B:1001:1", "bad TAC").code == C.NOT_ISSUER
    assert h.reject("A", "B:1001:1", "bad TAC").code == C.OK
    assert h.reject("A", "B:1001:1", "bad TAC").code == C.DUPLICATE_CHARGEBACK
    assert h.reject("A", "B:9:9", "bad TAC").code == C.UNKNOWN_RECORD
    first = h.close(W1)
    assert first.report is not None and first.report.chargebacks == 0  # not in its own window
    assert h.close(W1) == first and h.close(W1).report is first.report
    second = h.close(W2)
    assert second.report is not None and second.report.chargebacks == 1
    assert [(c.record_id, c.reason) for c in second.report.charged_back] == [("B:1001:1", "bad TAC")]
    back = 1000 - interchange_fen(1000, RATE_BP["A"])
    assert second.report.multilateral == {"A": back, "B": -back, "C": 0}
    assert h.statement("B", W2).chargebacks_paid_fen == back  # type: ignore[union-attr]
    assert h.close(W2) == second
    third = h.close(W3)
    assert third.report is not None and third.report.chargebacks == 0
    assert first.report.multilateral["B"] == 1500 - interchange_fen(1500, RATE_BP["A"])


def test_over_the_cap_suspends_until_settled() -> None:
    h = house(cap_fen=500)
    h.ingest(*delivery("B", W1, [rec("B", "A", 1, 800)]))
    assert h.settled("A", W1).code == C.WINDOW_OPEN
    assert h.stand_in_allowed("A") and h.suspended == frozenset()
    closed = h.close(W1)
    assert closed.report is not None and closed.report.suspended == {"A"}
    assert h.suspended == {"A"} and not h.stand_in_allowed("A") and h.stand_in_allowed("B")
    assert h.settled("B", W1).code == C.OK and h.suspended == {"A"}
    assert h.settled("Z", W1).code == C.UNKNOWN_SENDER
    assert h.settled("A", W2).code == C.UNKNOWN_WINDOW
    assert h.settled("A", W1).code == C.OK and h.suspended == frozenset() and h.stand_in_allowed("A")
    assert h.close(W1).report == closed.report and h.suspended == frozenset()  # re-closing does not re-suspend


# -- by property -------------------------------------------------------------------------------
WINDOWS = ("2026-12-07", "2026-12-08", "2026-12-09")
tap = st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(1, 50_000), st.integers(0, 2), st.booleans(),
                st.booleans())


@settings(max_examples=40, deadline=None)
@given(n_cities=st.integers(2, 6), taps=st.lists(tap, max_size=60), cap_fen=st.integers(0, 100_000),
       one_file=st.booleans())
def test_positions_and_statements_sum_to_zero_and_each_record_counts_once(
        n_cities: int, taps: list[tuple[int, int, int, int, bool, bool]], cap_fen: int, one_file: bool) -> None:
    cities = "ABCDEF"[:n_cities]
    h = house(cities, cap_fen)
    records: dict[str, list[ClearingRecord]] = {}  # by (acquirer, window)
    charged: list[ClearingRecord] = []
    for seq, (i, a, amount, wi, offline, bad) in enumerate(taps):
        iss, acq = cities[i % n_cities], cities[a % n_cities]
        r = rec(acq, iss, seq, amount, WINDOWS[wi], "offline" if offline else "online")
        records.setdefault(f"{acq}/{WINDOWS[wi]}", []).append(r)
        if bad and iss != acq:
            charged.append(r)
    cleared: list[ClearingRecord] = []
    for key, rs in records.items():
        got = h.ingest(*delivery(key[0], key[2:], rs, one_file=one_file))
        assert got.code == C.OK
        assert {x.record_id for x in got.rejected} == {r.record_id for r in rs if r.issuer == r.acquirer}
        cleared += [r for r in rs if r.issuer != r.acquirer]
    for r in charged:
        assert h.reject(r.issuer, r.record_id, "bad TAC").code == C.OK
    total_records = total_chargebacks = 0
    for w in WINDOWS:
        report = h.close(w).report
        assert report is not None
        assert sum(report.multilateral.values()) == 0
        assert sum(s.net_fen for s in report.statements.values()) == 0
        assert all(report.multilateral[c] == report.statements[c].net_fen for c in cities)
        assert report.suspended == {c for c in cities if -report.multilateral[c] > cap_fen}
        mine = [r for r in cleared if r.window == w]
        assert report.records == len(mine)
        for c in cities:  # each city's own books: what it acquired and issued this window
            s = report.statements[c]
            assert s.receivable_gross_fen == sum(r.amount_fen for r in mine if r.acquirer == c)
            assert s.payable_gross_fen == sum(r.amount_fen for r in mine if r.issuer == c)
        total_records += report.records
        total_chargebacks += report.chargebacks
    assert total_records == len(cleared)
    # a chargeback lands in a later window once; W3's own have no later window yet
    assert total_chargebacks == sum(1 for r in charged if r.window != WINDOWS[-1])
    assert h.close(WINDOWS[-1]).report is not None and h.close("2026-12-10").report.chargebacks == sum(  # type: ignore[union-attr]
        1 for r in charged if r.window == WINDOWS[-1])
