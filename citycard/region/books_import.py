"""The region lab books the house's results into each city's own tables, as `citycard settle
import-clearing` does (persistence/clearing_books.py), for the window cleared and the next one
(which carries the chargebacks), and audits what was booked: each city's imported figures equal
the house's statement, nothing is left unreconciled, and every chargeback is one loss line at
its acquirer and one line at its issuer."""

from collections import Counter
from typing import Any

from ..domain.clearing_records import ClearingRecord, SettlementReport, Statement
from ..persistence import clearing_books
from .audit import Verdict
from .cities import LabCity


async def import_all(cities: list[LabCity], house_url: str, sent: dict[str, list[ClearingRecord]],
                     windows: list[str]) -> dict[str, dict[str, clearing_books.Imported]]:
    """city -> window -> what it booked. ``sent``: each city's clearing file of the first window
    (it sends nothing in the later ones: the lab's next window is empty but for chargebacks)."""
    out: dict[str, dict[str, clearing_books.Imported]] = {}
    for c in cities:
        out[c.code] = {}
        for n, window in enumerate(windows):
            async with c.platform.pool.acquire() as conn:
                out[c.code][window] = await clearing_books.import_from_house(
                    conn, house_url, c.code, window, sent[c.code] if n == 0 else [], c.spec.key)
    return out


def check_imported(v: Verdict, imported: dict[str, dict[str, clearing_books.Imported]],
                   statements: dict[str, dict[str, Statement | None]], reports: list[SettlementReport | None]) -> None:
    bad = 0
    for code, by_window in imported.items():
        for window, got in by_window.items():
            s = statements[window].get(code)
            diff = clearing_books.differences(got, s) if s is not None else {"statement": (0, -1)}
            if got.code != clearing_books.ImportCode.OK or diff or got.discrepancies:
                bad += 1
                v.fail(f"{code} {window}: booked {got.code.name}, differs from the house {diff},"
                       f" discrepancies {[d.what for d in got.discrepancies]}")
    v.checks["each_city_booked_the_house_figures"] = bad == 0 and bool(imported)
    # every chargeback of the house: one acquirer loss line and one issuer line, for its gross
    house: Counter[tuple[str, str, str, int]] = Counter(
        (cb.record_id, cb.issuer, cb.acquirer, cb.amount_fen) for r in reports if r is not None for cb in r.charged_back)
    lines: dict[str, Counter[tuple[str, str, str, int]]] = {"acquirer": Counter(), "issuer": Counter()}
    for by_window in imported.values():
        for got in by_window.values():
            for cb in got.chargebacks:
                lines[cb.role][(cb.record_id, cb.issuer, cb.acquirer, cb.amount_fen)] += 1
    ok = bool(house) and lines["acquirer"] == house and lines["issuer"] == house
    if not ok:
        v.fail(f"chargebacks: house {sum(house.values())}, acquirers' loss lines {sum(lines['acquirer'].values())},"
               f" issuers' lines {sum(lines['issuer'].values())}")
    v.checks["chargebacks_booked_once_at_acquirer_and_issuer"] = ok
    v.figures["booked"] = {code: {w: {"net_fen": got.statement.get("net_fen", 0), "loss_fen": got.loss_fen,
                                      "chargeback_lines": len(got.chargebacks)} for w, got in by_window.items()}
                           for code, by_window in imported.items()}


def as_dict(imported: dict[str, dict[str, clearing_books.Imported]]) -> dict[str, Any]:
    return {code: {w: got.as_dict() for w, got in by_window.items()} for code, by_window in imported.items()}


__all__ = ["as_dict", "check_imported", "import_all"]
