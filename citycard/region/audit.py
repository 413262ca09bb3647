"""The region lab's audit: what the terminals were told, each city's own tables and the
clearing house's figures, checked against each other (docs/interop.md, "The region lab").
``read_books`` reads one city; ``audit`` is pure."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..domain.clearing_records import ClearingRecord, SettlementReport, Statement
from ..domain.netting import interchange_fen
from ..domain.results import Result
from ..interop.store import REMOTE_SLOT_BITS, REMOTE_TERMINAL_BASE, remote_terminal_id
from ..loadtest import audit as money_audit
from .traffic import TapRecord

_OK = int(Result.OK)
MAX_PROBLEMS_LISTED = 20


@dataclass
class Books:
    """One city's own tables, as acquirer and as issuer."""

    code: str
    standins: dict[tuple[int, int], tuple[str, str, int]]  # (terminal, seq) -> issuer, state, amount_fen
    slots: dict[str, int]  # acquirer code -> its slot here (issuer side)
    remote_journal: Counter[tuple[int, int]]  # OK journal rows of visitors' taps here, by (terminal_id, seq)
    remote_amounts: dict[tuple[int, int], int]
    records: list[ClearingRecord]  # its clearing file(s) as acquirer
    money: dict[str, Any]  # loadtest.audit's Audit.as_dict()
    balanced: bool
    offline_payable: tuple[int, int] = (0, 0)  # records, fen: its cards' offline sales elsewhere (region/offline.py)
    own_journal: Counter[tuple[int, int]] = field(default_factory=Counter)  # OK rows of its own terminals
    own_amounts: dict[tuple[int, int], int] = field(default_factory=dict)


async def read_books(conn: Any, code: str, records: list[ClearingRecord], actor_balances: dict[int, int]) -> Books:
    standins = {(r["terminal_id"], r["seq"]): (r["issuer"], r["state"], int(r["amount_fen"]))
                for r in await conn.fetch("SELECT issuer, terminal_id, seq, state, amount_fen FROM standin_taps")}
    slots = {r["code"]: int(r["slot"]) for r in await conn.fetch("SELECT code, slot FROM interop_acquirers")}
    rows = await conn.fetch("SELECT terminal_id, seq, amount_fen FROM journal WHERE terminal_id >= $1 AND result = $2",
                            REMOTE_TERMINAL_BASE, _OK)
    journal: Counter[tuple[int, int]] = Counter((r["terminal_id"], r["seq"]) for r in rows)
    amounts = {(r["terminal_id"], r["seq"]): int(r["amount_fen"]) for r in rows}
    for key in await reversed_charges(conn, slots):  # a voided charge credited back: no record owed
        journal.pop(key, None)
        amounts.pop(key, None)
    own = await conn.fetch("SELECT terminal_id, seq, amount_fen FROM journal WHERE terminal_id < $1 AND result = $2",
                           REMOTE_TERMINAL_BASE, _OK)
    money = await money_audit.run_audit(conn, actor_balances)
    return Books(code, standins, slots, journal, amounts, records, money.as_dict(),
                 money.balanced and money.duplicate_seqs == 0 and not money.actor_mismatches,
                 own_journal=Counter((r["terminal_id"], r["seq"]) for r in own),
                 own_amounts={(r["terminal_id"], r["seq"]): int(r["amount_fen"]) for r in own})


async def reversed_charges(conn: Any, slots: dict[str, int]) -> list[tuple[int, int]]:
    """The issuer's journal keys (remote terminal id, seq) of visitors' charges an acquirer
    voided and this issuer credited back (interop/server.py's ``linkrev:`` credits, one per key;
    one the shard refused credited nothing and leaves the charge owed)."""
    out = []
    for r in await conn.fetch(f"SELECT op_key FROM journal WHERE op_key LIKE 'linkrev:%' AND result = {_OK}"):
        _, acquirer, terminal_id, seq = r["op_key"].split(":")
        if acquirer in slots:
            out.append((remote_terminal_id(slots[acquirer], int(terminal_id)), int(seq)))
    return out


@dataclass
class Verdict:
    checks: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def fail(self, what: str) -> None:
        if len(self.problems) < MAX_PROBLEMS_LISTED:
            self.problems.append(what)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": self.checks, "problems": self.problems, **self.figures}


def _cross_taps_once(v: Verdict, taps: list[TapRecord], books: dict[str, Books]) -> None:
    """Every visitor's tap answered OK is one OK journal row at its issuer, for the fare the
    terminal heard, or a stand-in the issuer declined (the acquirer's loss)."""
    once = losses = bad = 0
    for t in taps:
        if not t.cross or t.code != _OK:
            continue
        acq, iss = books[t.acquirer], books[t.issuer]
        slot = iss.slots.get(t.acquirer)
        key = (remote_terminal_id(slot, t.terminal_id), t.seq) if slot is not None else None
        n = iss.remote_journal[key] if key is not None else 0
        stood = acq.standins.get((t.terminal_id, t.seq))
        if n == 1 and key is not None and iss.remote_amounts[key] == t.fare_fen:
            once += 1
        elif n == 0 and stood is not None and stood[1] == "declined":
            losses += 1
        else:
            bad += 1
            v.fail(f"{t.acquirer} terminal {t.terminal_id} seq {t.seq} (card of {t.issuer}, {t.fare_fen} fen):"
                   f" {n} journal rows at its issuer, stand-in {stood}")
    v.checks["cross_city_taps_charged_exactly_once"] = bad == 0
    v.figures["cross_city_ok_taps"] = {"charged_once": once, "declined_standin_losses": losses, "wrong": bad}


def _home_taps_once(v: Verdict, taps: list[TapRecord], books: dict[str, Books]) -> None:
    """Every own card's tap answered OK is one OK journal row of its city, for the fare the
    terminal heard: across the whole-city restart too (a tap resent with its seq is a replay)."""
    once = bad = 0
    for t in taps:
        if t.cross or t.code != _OK:
            continue
        b = books[t.acquirer]
        key = (t.terminal_id, t.seq)
        if b.own_journal[key] == 1 and b.own_amounts[key] == t.fare_fen:
            once += 1
        else:
            bad += 1
            v.fail(f"{t.acquirer} terminal {t.terminal_id} seq {t.seq} ({t.fare_fen} fen): {b.own_journal[key]}"
                   f" journal rows, {b.own_amounts.get(key)} fen")
    v.checks["home_taps_journaled_exactly_once"] = bad == 0 and once > 0
    v.figures["home_ok_taps"] = {"journaled_once": once, "wrong": bad}


def _no_charge_without_record(v: Verdict, books: dict[str, Books]) -> None:
    """Every visitor's charge on an issuer's journal is a record of its acquirer's clearing file."""
    keys = {(r.issuer, r.acquirer, r.terminal_id, r.terminal_seq) for b in books.values() for r in b.records}
    extra = 0
    for iss in books.values():
        by_slot = {s: c for c, s in iss.slots.items()}
        for (rid, seq), n in iss.remote_journal.items():
            slot = (rid - REMOTE_TERMINAL_BASE) >> REMOTE_SLOT_BITS
            tid = (rid - REMOTE_TERMINAL_BASE) & ((1 << REMOTE_SLOT_BITS) - 1)
            if n != 1 or (iss.code, by_slot.get(slot, "?"), tid, seq) not in keys:
                extra += 1
                v.fail(f"{iss.code}: journal charge {rid}/{seq} x{n} is in no clearing record of {by_slot.get(slot)}")
    v.checks["no_issuer_charge_without_clearing_record"] = extra == 0


def _books_equal_statements(v: Verdict, books: dict[str, Books], statements: dict[str, Statement | None],
                            rate_bp: int) -> None:
    pairs: Counter[tuple[str, str]] = Counter()
    for b in books.values():
        for r in b.records:
            pairs[(r.issuer, r.acquirer)] += r.amount_fen
    net = dict.fromkeys(books, 0)
    for (iss, acq), gross in pairs.items():
        after_fee = gross - interchange_fen(gross, rate_bp)
        net[acq] += after_fee
        net[iss] -= after_fee
    mismatches = 0
    per_city = {}
    for code, b in books.items():
        s = statements.get(code)
        own = {"receivable_gross_fen": sum(r.amount_fen for r in b.records), "receivable_records": len(b.records),
               "payable_gross_fen": sum(b.remote_amounts.values()) + b.offline_payable[1],
               "payable_records": sum(b.remote_journal.values()) + b.offline_payable[0],
               "net_fen": net[code]}
        house = {k: getattr(s, k) for k in own} if s is not None else {}
        per_city[code] = {"own_books": own, "clearing_house": house}
        if own != house:
            mismatches += 1
            v.fail(f"{code}: own books {own} != clearing house {house}")
    v.checks["each_city_books_equal_clearing_statement"] = mismatches == 0
    v.figures["books"] = per_city


def audit(taps: list[TapRecord], books: dict[str, Books], report: SettlementReport | None,
          statements: dict[str, Statement | None], refusals: list[dict[str, Any]], outage: dict[str, Any],
          cleared: int, rate_bp: int) -> Verdict:
    v = Verdict()
    _cross_taps_once(v, taps, books)
    _home_taps_once(v, taps, books)
    _no_charge_without_record(v, books)
    _books_equal_statements(v, books, statements, rate_bp)
    positions = report.multilateral if report is not None else {}
    v.checks["window_closed"] = report is not None
    v.checks["multilateral_positions_sum_to_zero"] = report is not None and sum(positions.values()) == 0
    v.figures["multilateral_sum_fen"] = sum(positions.values())
    n_records = sum(len(b.records) for b in books.values())
    v.checks["cross_city_taps_cleared"] = n_records > 0  # a run where nothing crossed proves nothing
    v.checks["every_record_cleared_once"] = cleared == n_records and (report is None or report.records == n_records)
    unbalanced = [c for c, b in books.items() if not b.balanced]
    for c in unbalanced:
        v.fail(f"{c}: money not conserved: {books[c].money}")
    v.checks["money_conserved_per_city"] = not unbalanced
    pending = sum(1 for b in books.values() for s in b.standins.values() if s[1] == "pending")
    v.checks["no_standin_left_pending"] = pending == 0
    v.checks["outage_stood_in_and_advised"] = outage.get("standins_for_down_city", 0) > 0 and pending == 0
    seen = outage.get("its_terminals_saw") or {}
    v.checks["outage_city_restarted_and_its_terminals_reconnected"] = (
        "down_at_s" in outage and "up_at_s" in outage and seen.get("reconnected", 0) > 0)
    v.checks["bad_deliveries_refused_changing_nothing"] = bool(refusals) and all(
        r["refused"] and r["code"] == r["expected"] and r["changed_nothing"] for r in refusals)
    return v


def check_next_window(v: Verdict, first: SettlementReport | None, second: SettlementReport | None,
                      chargeback: dict[str, Any], rate_bp: int, also: Sequence[dict[str, Any]] = ()) -> None:
    """The issuer's verdict on one record of the first window is a chargeback of the next one,
    once, with its reason, for the record's gross less the issuer's fee, the acquirer paying it
    back; a second verdict on it is refused; the next window's positions sum to 0 too.
    ``also``: the other chargebacks it must carry, no more (the forged offline records,
    region/audit_offline.py); the fee is per (issuer, acquirer) pair, as the house nets."""
    ok = chargeback.get("code") == "OK" and second is not None and first is not None and first.chargebacks == 0
    if ok and second is not None:
        want = [chargeback, *also]
        pairs: Counter[tuple[str, str]] = Counter()
        for c in want:
            pairs[(c["issuer"], c["acquirer"])] += c["amount_fen"]
        received: Counter[str] = Counter()
        paid: Counter[str] = Counter()
        for (iss, acq), gross in pairs.items():
            received[iss] += gross - interchange_fen(gross, rate_bp)
            paid[acq] += gross - interchange_fen(gross, rate_bp)
        ok = (second.chargebacks == len(want) and len(second.charged_back) == len(want)
              and sorted(c.record_id for c in second.charged_back) == sorted(c["record_id"] for c in want)
              and [c.reason for c in second.charged_back if c.record_id == chargeback["record_id"]]
              == [chargeback["reason"]]
              and all(s.chargebacks_received_fen == received[code] and s.chargebacks_paid_fen == paid[code]
                      for code, s in second.statements.items())
              and received[chargeback["issuer"]] > 0
              and sum(second.multilateral.values()) == 0
              and chargeback.get("again_code") == "DUPLICATE_CHARGEBACK")
    if not ok:
        v.fail(f"the verdict's chargeback: {chargeback}, next window {second}")
    v.checks["verdict_charged_back_once_in_next_window"] = ok


def check_unknown_card(v: Verdict, unknown: dict[str, Any]) -> None:
    """The delivery carrying a record for a card no issuer has is accepted without that record,
    which is rejected alone with its reason."""
    rejected = unknown.get("rejected") or []
    ok = (unknown.get("delivery_code") == "OK" and unknown.get("accepted") == unknown.get("own_records")
          and len(rejected) == 1 and rejected[0].get("record_id") == unknown.get("record_id")
          and rejected[0].get("code") == "UNKNOWN_ISSUER" and bool(rejected[0].get("reason")))
    if not ok:
        v.fail(f"the record for an unknown card: {unknown}")
    v.checks["unknown_card_record_rejected_alone"] = ok


def check_suspension(v: Verdict, s: dict[str, Any], cities: list[str]) -> None:
    """The house suspended a city over its cap; every desk learned it by polling; with its
    link down its cards were refused stand-in elsewhere (ISSUER_NOT_ACCEPTED), none stood in;
    settlement lifted it, at the house and on every desk."""
    lifted = s.get("lifted") or {}
    checks = {
        "suspension_happened": bool(s.get("house")),
        "suspension_polled_by_every_desk": bool(s.get("desks_saw_it")) and all(
            set(got) == set(s["house"]) - {c} for c, got in (s.get("desks") or {}).items()) and
        set(s.get("desks") or {}) == set(cities),
        "suspended_issuer_refused_standin": s.get("link_down_taps", 0) > 0 and
        s.get("refused") == s.get("link_down_taps") and s.get("stood_in_meanwhile") == 0,
        "settlement_lifted_suspension": bool(lifted.get("settled")) and lifted.get("house_after") == [] and
        bool(lifted.get("desks_lifted")) and all(a == "OK" for a in (lifted.get("answers") or {}).values()),
    }
    for name, ok in checks.items():
        if not ok:
            v.fail(f"{name}: {s}")
    v.checks.update(checks)


__all__ = ["Books", "Verdict", "audit", "check_next_window", "check_suspension", "check_unknown_card", "read_books"]
