"""The region lab's audit of its offline visitors (region/offline.py; docs/interop.md, "The
region lab"), pure: what the validators made and the gateways answered, the acquirers' clearing
files, what each issuer fetched and rejected, and the house's two windows, against each other."""

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..domain.clearing_records import ClearingRecord, SettlementReport
from ..domain.offline_book import OfflineCode
from ..domain.offline_verdicts import FORGED_TAC
from .audit import Verdict
from .offline import Upload

_FWD = int(OfflineCode.FORWARDED)


def expected_chargebacks(uploads: Sequence[Upload]) -> list[dict[str, Any]]:
    """The forged records: each must come back to its issuer in the next window."""
    return [{"record_id": u.record_id, "issuer": u.issuer, "acquirer": u.acquirer, "amount_fen": u.amount_fen}
            for u in uploads if u.forged]


def check_offline_visitors(v: Verdict, uploads: Sequence[Upload], files: dict[str, list[ClearingRecord]],
                  verified: dict[str, dict[str, Any]], second: SettlementReport | None, want_forged: bool) -> None:
    """``files``: each acquirer's clearing records (all kinds); ``verified``: each issuer's
    ``clearing verify`` answer plus the offline records the house gave it (id, acquirer, fen)."""
    by_id = {u.record_id: u for u in uploads}
    forged = {u.record_id for u in uploads if u.forged}

    # every record made was answered FORWARDED by its acquirer's gateway (forged ones too: it has no TAC key)
    not_fwd = [u for u in uploads if u.code != _FWD]
    for u in not_fwd[:5]:
        v.fail(f"offline {u.record_id} (card of {u.issuer}): answered {u.code}, not FORWARDED")
    v.checks["offline_visitors_forwarded"] = (bool(uploads) and len(by_id) == len(uploads) and not not_fwd
                                              and len(forged) < len(uploads) and (bool(forged) or not want_forged))

    # each in its acquirer's file once, as made; each handed to its issuer by the house once; none again next window
    sent = Counter(r.record_id for recs in files.values() for r in recs if r.kind == "offline")
    wrong = [rid for rid, n in sent.items() if n != 1 or rid not in by_id] + [rid for rid in by_id if rid not in sent]
    for recs in files.values():
        for r in recs:
            got = by_id.get(r.record_id)
            if r.kind == "offline" and got is not None and (r.issuer, r.acquirer, r.card_no, r.amount_fen,
                                                             r.tac.hex(), r.offline_counter) != (
                    got.issuer, got.acquirer, got.card_no, got.amount_fen, got.tac, got.counter):
                wrong.append(r.record_id)
    fetched = Counter((rid, iss) for iss, got in verified.items() for rid, _acq, _fen in got["records"])
    wrong += [rid for (rid, iss), n in fetched.items() if n != 1 or rid not in by_id or by_id[rid].issuer != iss]
    wrong += [rid for rid, u in by_id.items() if fetched[(rid, u.issuer)] != 1]
    for rid in wrong[:5]:
        v.fail(f"offline {rid}: not in one clearing file and one issuer's records exactly once, as made")
    again = second is None or second.records != 0
    if again:
        v.fail(f"the next window cleared records again: {second.records if second else None}")
    v.checks["offline_visitors_cleared_once"] = not wrong and not again

    # the issuers: every forged one rejected (a verdict), every genuine one kept; each checked once
    back = Counter(c.record_id for c in (second.charged_back if second else ()) if c.reason == FORGED_TAC)
    rejected = {c: int(g["rejected"]) for c, g in verified.items()}
    want = Counter(by_id[rid].issuer for rid in forged)
    failed = [f for g in verified.values() for f in g["failed"]]
    ok = (set(back) == forged and all(n == 1 for n in back.values()) and not failed
          and all(rejected[c] == want[c] for c in verified) and sum(rejected.values()) == len(forged))
    if not ok:
        v.fail(f"forged offline records {sorted(forged)[:5]}: rejected {rejected}, charged back"
               f" {sorted(back)[:5]}, verdicts refused {failed[:3]}")
    v.checks["forged_offline_rejected_and_charged_back_once"] = ok
    genuine_back = [rid for rid in back if rid not in forged]
    checked = {c: int(g["offline"]) for c, g in verified.items()}
    made = Counter(u.issuer for u in uploads)
    ok = not genuine_back and all(checked[c] == made[c] for c in verified)
    if not ok:
        v.fail(f"genuine offline records rejected {genuine_back[:5]}; checked {checked}, made {dict(made)}")
    v.checks["no_genuine_offline_rejected"] = ok

    # the fen: each acquirer's file and each issuer's records equal what the validators sold
    acq_file = Counter({c: sum(r.amount_fen for r in recs if r.kind == "offline") for c, recs in files.items()})
    acq_made: Counter[str] = Counter()
    iss_made: Counter[str] = Counter()
    for u in uploads:
        acq_made[u.acquirer] += u.amount_fen
        iss_made[u.issuer] += u.amount_fen
    iss_house = Counter({c: sum(fen for _r, _a, fen in g["records"]) for c, g in verified.items()})
    ok = +acq_file == +acq_made and +iss_house == +iss_made
    if not ok:
        v.fail(f"offline fen: acquirers' files {dict(acq_file)} vs sold {dict(acq_made)};"
               f" issuers' records {dict(iss_house)} vs sold {dict(iss_made)}")
    v.checks["offline_figures_agree_with_house"] = ok
    v.figures["offline_visitors"] = {
        "records": len(uploads), "forged": len(forged), "sold_fen": sum(u.amount_fen for u in uploads),
        "forged_fen": sum(by_id[rid].amount_fen for rid in forged),
        "by_acquirer_fen": dict(acq_made), "by_issuer_fen": dict(iss_made),
        "rejected_by_issuer": rejected, "charged_back_next_window": len(back)}


__all__ = ["check_offline_visitors", "expected_chargebacks"]
