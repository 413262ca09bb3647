"""The region lab end to end, small: three real platforms in this process on the machine's
Postgres (a schema each), own and visitors' taps over the terminal protocol, one whole city
stopped and restarted on its schema and ports, settlement, clearing, a suspension over the net
debit cap polled by the cities and lifted by settlement, and the audit (docs/interop.md, "The
region lab")."""

import asyncio

import pytest

from citycard.cli.services import Services
from citycard.domain.offline_verdicts import FORGED_TAC
from citycard.region import offline
from citycard.region.lab import LabSpec, run_lab
from citycard.region.report import render_html
from tests.support.services import drop_city_data, make_settings, new_schema

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_three_cities_with_an_outage_clear_and_audit(configured_services, tmp_path) -> None:  # noqa: ANN001
    prefix = new_schema()
    spec = LabSpec(cities=3, cards=300, terminals=2, duration_s=12.0, taps_per_s=10.0, visitor_share=0.5,
                   schema_prefix=prefix, down_city=2, outage_from=0.25, outage_until=0.6)
    base = make_settings(configured_services, prefix)
    services = Services(configured_services.db_url, configured_services.redis_url)
    try:
        report = asyncio.run(run_lab(base, services, spec, tmp_path))
    finally:
        for code in ("c01", "c02", "c03", "house"):
            drop_city_data(configured_services, f"{prefix}_{code}")
    audit = report["audit"]
    assert audit["ok"], audit["problems"]
    assert report["ok"]
    assert all(audit["checks"].values()) and len(audit["checks"]) >= 21
    # the outage: C02 stopped whole and came back as a new platform on the same ports; its own
    # terminals were refused, reconnected and resent their seqs; its cards were stood in elsewhere,
    # and every stand-in was decided once it was back
    outage = report["outage"]
    assert outage["down_at_s"] < outage["up_at_s"] and outage["restart_s"] > 0
    saw = outage["its_terminals_saw"]
    assert saw["refused_connects"] > 0 and saw["reconnected"] >= spec.terminals and saw["lost_connections"] > 0
    assert outage["standins_for_down_city"] > 0
    assert outage["pending_after_wait"] == 0
    assert audit["home_ok_taps"]["wrong"] == 0 and audit["home_ok_taps"]["journaled_once"] > 0
    assert any(k.endswith(":confirmed") for k in report["totals"]["standins"])
    # visitors' taps went across and were cleared; positions net to zero
    assert report["totals"]["cross_city_ok"] > 0 and report["totals"]["cleared_records"] > 0
    assert sum(report["clearing"]["multilateral_fen"].values()) == 0
    # each bad delivery refused over HTTP by the clearing house service, for its own reason, changing nothing
    assert report["clearing"]["house_url"].startswith("http://127.0.0.1:")
    assert {r["what"]: (r["code"], r["http_status"]) for r in report["refusals"]} == {
        "wrong sum": ("BAD_MANIFEST", 422), "forged signature": ("BAD_SIGNATURE", 422),
        "duplicate delivery": ("DUPLICATE_FILE", 409)}
    assert all(r["changed_nothing"] for r in report["refusals"])
    # the record for an unknown card is rejected alone, the rest of its delivery cleared
    unknown = report["clearing"]["unknown_card"]
    assert unknown["delivery_code"] == "OK" and unknown["accepted"] == unknown["own_records"]
    assert [(r["record_id"], r["code"]) for r in unknown["rejected"]] == [(unknown["record_id"], "UNKNOWN_ISSUER")]
    # the issuer's verdict: a chargeback once, with its reason, in the next window (none in the first)
    cb, nxt = report["clearing"]["chargeback"], report["clearing"]["next_window"]
    assert cb["code"] == "OK" and cb["again_code"] == "DUPLICATE_CHARGEBACK"
    off = report["offline_visitors"]
    assert nxt["window"] == cb["window"] and nxt["chargebacks"] == 1 + off["forged"]
    assert [(c["record_id"], c["reason"]) for c in nxt["charged_back"] if c["record_id"] == cb["record_id"]] == [
        (cb["record_id"], cb["reason"])]
    assert nxt["statements"][cb["issuer"]]["chargebacks_received_fen"] > 0
    assert sum(nxt["multilateral"].values()) == 0
    # the house suspended the net debtors (cap 0); every desk polled it; the biggest debtor's cards
    # were refused stand-in with its link down; settlement lifted it everywhere
    susp = report["clearing"]["suspension"]
    assert susp["house"] and susp["city"] in susp["house"]
    assert susp["positions_fen"][susp["city"]] == min(susp["positions_fen"].values()) < 0
    assert set(susp["desks"]) == {"C01", "C02", "C03"} and all(
        set(got) == set(susp["house"]) - {c} for c, got in susp["desks"].items())
    assert susp["codes"] == ["ISSUER_NOT_ACCEPTED"] and susp["refused"] == susp["link_down_taps"] == 6
    assert susp["stood_in_meanwhile"] == 0
    assert susp["lifted"]["house_after"] == [] and all(v == [] for v in susp["lifted"]["desks_after"].values())
    page = render_html(report)
    assert page.count("data:image/png;base64,") == 3
    # each city's own settlement window closed, its bus company's line holding its home rides
    for closing in report["settlement_windows"].values():
        assert closing["state"] == "closed" and closing["lines"] == 1 and closing["gross_fen"] > 0
    # offline visitors: every record FORWARDED by its acquirer and cleared; each issuer found its
    # forged ones (a TAC under its own keys), and they came back as chargebacks in the next window
    assert off["records"] > off["forged"] >= 3 and off["codes"] == {"FORWARDED": off["records"]}
    assert sum(i["offline"] for i in off["issuers"].values()) == off["records"]
    assert sum(i["rejected"] for i in off["issuers"].values()) == off["forged"]
    assert all(i["failed"] == [] for i in off["issuers"].values())
    assert sum(1 for c in nxt["charged_back"] if c["reason"] == FORGED_TAC) == off["forged"]
    assert audit["offline_visitors"]["charged_back_next_window"] == off["forged"]
    for check in ("offline_visitors_forwarded", "offline_visitors_cleared_once",
                  "forged_offline_rejected_and_charged_back_once", "no_genuine_offline_rejected",
                  "offline_figures_agree_with_house"):
        assert audit["checks"][check], check


def test_an_issuer_accepting_a_forged_offline_record_fails_the_audit(configured_services, tmp_path,  # noqa: ANN001
                                                                     monkeypatch) -> None:  # noqa: ANN001
    """Each issuer checks nothing (no verdicts): the forged records are not charged back."""

    def lax_verify(base: str, city: str, window: str, key: object, keys: object) -> dict[str, object]:
        return {"offline": 0, "online": 0, "rejected": 0, "rejected_before": 0, "failed": []}

    monkeypatch.setattr(offline, "verify", lax_verify)
    prefix = new_schema()
    spec = LabSpec(cities=2, cards=200, terminals=1, duration_s=5.0, taps_per_s=5.0, visitor_share=0.5,
                   schema_prefix=prefix, down_city=2, outage_from=0.2, outage_until=0.5, offline_per_s=4.0)
    base = make_settings(configured_services, prefix)
    services = Services(configured_services.db_url, configured_services.redis_url)
    try:
        report = asyncio.run(run_lab(base, services, spec, tmp_path))
    finally:
        for code in ("c01", "c02", "house"):
            drop_city_data(configured_services, f"{prefix}_{code}")
    checks = report["audit"]["checks"]
    assert report["offline_visitors"]["forged"] >= 2 and not report["ok"]
    assert not checks["forged_offline_rejected_and_charged_back_once"]
    assert checks["offline_visitors_forwarded"] and checks["offline_visitors_cleared_once"]
