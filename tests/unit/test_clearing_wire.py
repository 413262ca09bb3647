"""The clearing house's HTTP messages (citycard/clearing/wire.py): bounds refused with a named
limit before anything reaches the core, the verdict's signed bytes bind every field, and a
report's JSON keeps the positions (which sum to 0) and the payer/payee direction."""

import base64

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.clearing import wire
from citycard.domain.clearing_records import Chargeback, settle


def _delivery(**over: object) -> wire.DeliveryIn:
    fields: dict[str, object] = {"sender": "B", "window": "2026-12-07", "manifest_b64": base64.b64encode(b"{}").decode(),
                                 "signature_b64": base64.b64encode(b"s" * 64).decode(),
                                 "files_b64": {"A.csv": base64.b64encode(b"x").decode()}}
    fields.update(over)
    return wire.DeliveryIn(**fields)  # type: ignore[arg-type]


def test_a_good_delivery_decodes() -> None:
    sender, window, manifest, signature, files = wire.delivery(_delivery())
    assert (sender, window, manifest, signature, files) == ("B", "2026-12-07", b"{}", b"s" * 64, {"A.csv": b"x"})


@pytest.mark.parametrize(("over", "says"), [
    ({"sender": "B:1"}, "sender"),
    ({"files_b64": {"../etc": "eA=="}}, "file name"),
    ({"files_b64": {f"f{i}.csv": "eA==" for i in range(wire.MAX_FILES + 1)}}, "at most"),
    ({"manifest_b64": "not base64!"}, "not base64"),
    ({"signature_b64": base64.b64encode(b"s" * 63).decode()}, "64 bytes"),
    ({"manifest_b64": base64.b64encode(b"m" * (wire.MAX_MANIFEST_BYTES + 1)).decode()}, "over"),
])
def test_a_delivery_out_of_bounds_is_refused(over: dict[str, object], says: str) -> None:
    with pytest.raises(wire.Refusal, match=says) as exc:
        wire.delivery(_delivery(**over))
    assert exc.value.code == "BAD_REQUEST"


def test_bodies_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(wire.Refusal, match="does not check"):
        wire.decode(b'{"sender": "B"}', wire.DeliveryIn)
    with pytest.raises(wire.Refusal, match="does not check"):
        wire.decode(msgspec.json.encode({"issuer": "A", "record_id": "x", "reason": "r", "signature_b64": "",
                                         "extra": 1}), wire.VerdictIn)


def test_participant_bounds() -> None:
    ok = wire.ParticipantIn("A", "00" * 32, 0, 10_000, ["3100"])
    assert wire.participant(ok) == ("A", b"\0" * 32, 0, 10_000, ("3100",))
    for bad in (wire.ParticipantIn("A", "00" * 31, 0, 1), wire.ParticipantIn("A", "zz" * 32, 0, 1),
                wire.ParticipantIn("A", "00" * 32, -1, 1), wire.ParticipantIn("A", "00" * 32, 0, 10_001),
                wire.ParticipantIn("A", "00" * 32, 0, 1, ["31x"])):
        with pytest.raises(wire.Refusal):
            wire.participant(bad)


@given(st.text(min_size=1, max_size=5), st.text(min_size=1, max_size=5), st.text(min_size=1, max_size=5))
@settings(max_examples=50)
def test_verdict_bytes_bind_each_field(issuer: str, record_id: str, reason: str) -> None:
    base = wire.verdict_bytes(issuer, record_id, reason)
    assert wire.verdict_bytes(issuer + "x", record_id, reason) != base
    assert wire.verdict_bytes(issuer, record_id + "x", reason) != base
    assert wire.verdict_bytes(issuer, record_id, reason + "x") != base


def test_a_verdict_reason_is_one_bounded_line() -> None:
    sig = base64.b64encode(b"s" * 64).decode()
    assert wire.verdict(wire.VerdictIn("A", "B:1:2", "bad TAC", sig))[:3] == ("A", "B:1:2", "bad TAC")
    for reason in ("", "two\nlines", "r" * 201):
        with pytest.raises(wire.Refusal, match="reason"):
            wire.verdict(wire.VerdictIn("A", "B:1:2", reason, sig))


@given(st.dictionaries(st.tuples(st.sampled_from("ABC"), st.sampled_from("ABC")).filter(lambda p: p[0] != p[1]),
                       st.integers(1, 10**9), max_size=6),
       st.integers(0, 3))
@settings(max_examples=50)
def test_report_json_keeps_positions_and_direction(sales: dict[tuple[str, str], int], backs: int) -> None:
    cbs = [Chargeback(f"x{i}", "A", "B", 100 + i, "20261206", "bad TAC") for i in range(backs)]
    report = settle("2026-12-07", ["A", "B", "C"], {"A": 100, "B": 50, "C": 0}, dict.fromkeys("ABC", 0),
                    {k: [v, 1] for k, v in sales.items()}, cbs)
    j = wire.report_json(report)
    assert sum(j["multilateral"].values()) == 0
    assert j["multilateral"] == report.multilateral
    for b in j["bilateral"]:  # what each payer pays, recomputed from the obligations
        owed = sum(o["amount_fen"] for o in j["obligations"] if (o["payer"], o["payee"]) == (b["payer"], b["payee"]))
        back = sum(o["amount_fen"] for o in j["obligations"] if (o["payer"], o["payee"]) == (b["payee"], b["payer"]))
        assert b["amount_fen"] == owed - back > 0
    assert [c["record_id"] for c in j["charged_back"]] == [c.record_id for c in cbs]
