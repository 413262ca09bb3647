"""The issuer's check of its cards' offline records cleared elsewhere (issue 15 item 2, the
issuer's side; docs/clearing.md, "Visitors' cards sold offline"), pure.

Another city's host sold to this issuer's cards offline and could not check the TACs (it has
none of this issuer's keys): the house hands the issuer the records cleared against its cards,
and the issuer rejects each offline one whose TAC does not check under its card's key. A
rejection comes back to it as a chargeback in a later window.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from .clearing_records import ClearingRecord
from .offline import IssuerKeys, tac_ok

FORGED_TAC = "offline TAC does not check with the issuer's keys"
NOT_A_RECORD = "offline record no card makes"


@dataclass(frozen=True, slots=True)
class Checked:
    offline: int  # offline records checked
    online: int  # online records (decided by the issuer over the link: nothing to check)
    bad: list[tuple[str, str]]  # (record_id, reason) of each offline record to reject


def check_offline(records: Iterable[ClearingRecord], keys: IssuerKeys) -> Checked:
    """Each offline record's TAC checked under its card's key (derived from ``keys``)."""
    offline = online = 0
    bad: list[tuple[str, str]] = []
    for r in records:
        if r.kind != "offline":
            online += 1
            continue
        offline += 1
        try:
            record = r.offline_record()
        except ValueError as exc:  # a date that is no calendar date
            bad.append((r.record_id, f"{NOT_A_RECORD}: {exc}"[:200]))
            continue
        if not tac_ok(keys.dtk(r.card_no), record):
            bad.append((r.record_id, FORGED_TAC))
    return Checked(offline, online, bad)


__all__ = ["FORGED_TAC", "NOT_A_RECORD", "Checked", "check_offline"]
