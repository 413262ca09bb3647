"""The region lab's offline visitors, pure (region/offline.py, region/audit_offline.py): each
city's own card keys, and the audit of records made by cards, cleared by a house in memory,
checked by their issuers with domain.offline_verdicts, forged ones charged back next window;
the audit fails when a forged record is accepted, a genuine one rejected, or one cleared twice."""

import random
from dataclasses import replace

from citycard.domain.cards import make_card_no
from citycard.domain.clearing import ClearingHouse
from citycard.domain.clearing_records import (
    ClearingCode,
    ClearingRecord,
    SettlementReport,
    record_id_of,
)
from citycard.domain.epurse_crypto import When
from citycard.domain.offline import IssuerKeys
from citycard.domain.offline_verdicts import FORGED_TAC, check_offline
from citycard.loadtest.offline_gen import VALIDATOR_FIRST_ID, CardDeck, CardPurse, DtkCache
from citycard.protocols.codes import OfflineCode
from citycard.region.audit import Verdict, check_next_window
from citycard.region.audit_offline import check_offline_visitors as audit_offline
from citycard.region.audit_offline import expected_chargebacks
from citycard.region.cities import CitySpec, card_keys
from citycard.region.clearing import INTERCHANGE_BP, Delivery, delivery, next_window
from citycard.region.offline import Upload

WINDOW = "2026-12-07"
WHEN = When.of(WINDOW.replace("-", ""), "083000")
FWD = int(OfflineCode.FORWARDED)


def spec(i: int) -> CitySpec:
    return CitySpec(i, f"C{i:02d}", 900100 + i, f"s{i}", 0, bytes([i]) * 32)


class PureHouse:
    """The house's pure core in memory (the lab speaks HTTP to the service: tests/e2e)."""

    def __init__(self, specs: list[CitySpec]) -> None:
        self.core = ClearingHouse(retain_windows=7)
        for s in specs:
            self.core.register(s.code, s.key.public_key(), 100_000_000, INTERCHANGE_BP, (str(s.prefix),))

    def deliver(self, d: Delivery) -> str:
        return ClearingCode(self.core.ingest(d.sender, d.window, d.manifest, d.signature, d.files).code).name

    def close(self, window: str) -> SettlementReport | None:
        return self.core.close(window).report


def keys(code: str) -> IssuerKeys:
    k = card_keys(code)
    return IssuerKeys.of_hex(k["issuer_mpk_hex"], k["issuer_mlk_hex"], k["issuer_mtk_hex"])


def test_each_city_has_its_own_card_keys_and_a_tac_checks_only_under_its_issuers() -> None:
    assert card_keys("C01") == card_keys("C01") and card_keys("C01") != card_keys("C02")
    deck = CardDeck([CardPurse(make_card_no(7, 900101), 1000, 1)], DtkCache(keys("C01")), random.Random(1))
    made = deck.purchase(VALIDATOR_FIRST_ID, 1, WHEN, 1, 1)
    assert made is not None
    r = made.record
    cr = ClearingRecord(record_id_of("C02", r.terminal_id, 1), "C01", "C02", r.card_no, r.amount_fen, "offline",
                        WINDOW, r.terminal_id, 1, "20261207083000", r.offline_counter, r.balance_after_fen,
                        r.transaction_type, r.tac)
    assert check_offline([cr], keys("C01")).bad == []
    assert check_offline([cr], keys("C02")).bad == [(cr.record_id, FORGED_TAC)]


def made_uploads(n_per_pair: int = 4) -> list[Upload]:
    """Cards of each city bought rides at the others' validators; the first of each pair is forged."""
    specs = [spec(1), spec(2), spec(3)]
    decks = {s.code: CardDeck([CardPurse(make_card_no(i, s.prefix), 5000, 1) for i in range(1, 6)],
                              DtkCache(keys(s.code)), random.Random(s.index)) for s in specs}
    out = []
    for acq in specs:
        seq = 0
        for iss in specs:
            if iss is acq:
                continue
            for k in range(n_per_pair):
                seq += 1
                m = decks[iss.code].purchase(VALIDATOR_FIRST_ID, seq, WHEN, 1, 1, forge=k == 0)
                assert m is not None
                r = m.record
                out.append(Upload(acq.code, iss.code, r.terminal_id, seq, r.card_no, r.offline_counter, r.amount_fen,
                                  r.tac.hex(), m.forged, FWD))
    return out


def record_of(u: Upload) -> ClearingRecord:
    return ClearingRecord(u.record_id, u.issuer, u.acquirer, u.card_no, u.amount_fen, "offline", WINDOW,
                          u.terminal_id, u.terminal_seq, "20261207083000", u.counter, 0, 0x09, bytes.fromhex(u.tac))


def cleared(uploads: list[Upload], reject_forged: bool = True, also_reject: str | None = None,
            files: dict[str, list[ClearingRecord]] | None = None
            ) -> tuple[dict[str, list[ClearingRecord]], dict[str, dict[str, object]], SettlementReport | None]:
    """The acquirers' files delivered, the window closed, each issuer's verify (the pure check,
    verdicts to the house), the next window closed."""
    specs = [spec(1), spec(2), spec(3)]
    house = PureHouse(specs)
    if files is None:
        files = {s.code: [record_of(u) for u in uploads if u.acquirer == s.code] for s in specs}
    for s in specs:
        assert house.deliver(delivery(s.key, s.code, WINDOW, files[s.code])) == "OK"
    assert house.close(WINDOW) is not None
    verified: dict[str, dict[str, object]] = {}
    for s in specs:
        mine = [r for recs in files.values() for r in recs if r.issuer == s.code]
        got = check_offline(mine, keys(s.code))
        bad = got.bad if reject_forged else []
        bad = bad + [(rid, FORGED_TAC) for rid in [also_reject] if rid and any(r.record_id == rid for r in mine)]
        for rid, reason in bad:
            assert house.core.reject(s.code, rid, reason).code == ClearingCode.OK
        verified[s.code] = {"offline": got.offline, "rejected": len(bad), "failed": [],
                            "records": [(r.record_id, r.acquirer, r.amount_fen) for r in mine]}
    return files, verified, house.close(next_window(WINDOW))


def test_the_audit_passes_when_forged_ones_come_back_and_fails_when_they_do_not() -> None:
    uploads = made_uploads()
    forged = [u for u in uploads if u.forged]
    assert len(forged) == 6 and len(uploads) == 24
    files, verified, second = cleared(uploads)
    v = Verdict()
    audit_offline(v, uploads, files, verified, second, True)
    assert v.ok and len(v.checks) == 5, v.problems
    assert v.figures["offline_visitors"]["charged_back_next_window"] == 6

    # a forged record the issuer accepted (its verify skipped): the forged check fails
    files, verified, second = cleared(uploads, reject_forged=False)
    v = Verdict()
    audit_offline(v, uploads, files, verified, second, True)
    assert not v.checks["forged_offline_rejected_and_charged_back_once"]
    assert v.checks["no_genuine_offline_rejected"]

    # a genuine record rejected too
    genuine = next(u for u in uploads if not u.forged)
    files, verified, second = cleared(uploads, also_reject=genuine.record_id)
    v = Verdict()
    audit_offline(v, uploads, files, verified, second, True)
    assert not v.checks["no_genuine_offline_rejected"]

    # a record left out of its acquirer's file, another in it twice (as a second record id)
    files = {c: [record_of(u) for u in uploads if u.acquirer == c] for c in ("C01", "C02", "C03")}
    files["C01"] = files["C01"][1:] + [replace(files["C01"][1], record_id=record_id_of("C01", VALIDATOR_FIRST_ID, 99),
                                               terminal_seq=99)]
    files, verified, second = cleared(uploads, files=files)
    v = Verdict()
    audit_offline(v, uploads, files, verified, second, True)
    assert not v.checks["offline_visitors_cleared_once"]

    # a record the gateway did not answer FORWARDED
    v = Verdict()
    files, verified, second = cleared(uploads)
    audit_offline(v, [replace(uploads[0], code=int(OfflineCode.BAD_TAC)), *uploads[1:]], files, verified, second,
                  True)
    assert not v.checks["offline_visitors_forwarded"]


def test_the_next_window_carries_exactly_the_verdicts_chargebacks() -> None:
    uploads = made_uploads()
    files, verified, second = cleared(uploads)
    assert second is not None
    # the lab's own verdict on an online record stands for one of the forged ones here
    first_forged = next(u for u in uploads if u.forged)
    cb = {"code": "OK", "again_code": "DUPLICATE_CHARGEBACK", "issuer": first_forged.issuer,
          "acquirer": first_forged.acquirer, "record_id": first_forged.record_id,
          "amount_fen": first_forged.amount_fen, "reason": FORGED_TAC}
    others = [c for c in expected_chargebacks(uploads) if c["record_id"] != first_forged.record_id]
    first = replace(second, chargebacks=0)
    v = Verdict()
    check_next_window(v, first, second, cb, INTERCHANGE_BP, also=others)
    assert v.checks["verdict_charged_back_once_in_next_window"], v.problems
    v = Verdict()  # the offline ones not expected: more chargebacks than the check wants
    check_next_window(v, first, second, cb, INTERCHANGE_BP)
    assert not v.checks["verdict_charged_back_once_in_next_window"]
    v = Verdict()  # one more expected than came back
    extra = {**others[0], "record_id": "C09:1:1"}
    check_next_window(v, first, second, cb, INTERCHANGE_BP, also=[*others, extra])
    assert not v.checks["verdict_charged_back_once_in_next_window"]
