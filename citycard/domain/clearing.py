"""The regional clearing house's core, pure (issue 15, item 3; the rules in docs/clearing.md).

Each acquirer city delivers, once per window, a signed manifest and its clearing files
(protocols/clearing_files.py). A refused delivery changes nothing; inside an accepted one each
record is cleared or rejected with its reason. Issuers reject records (a bad TAC) as
chargebacks; ``close`` nets a window; ``settled`` lifts a cap suspension.

Memory is bounded: at most ``retain_windows`` windows are held, each with at most
``max_records_per_window`` record ids (~150 bytes each). A window or a tap dated at or before
the newest dropped window is refused (WINDOW_TOO_OLD): its ids are gone, so it could not be
told from a duplicate.
"""

import hashlib
from collections.abc import Mapping
from itertools import repeat

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..protocols.clearing_files import Columns, WindowRefused, parse_columns
from ..protocols.settlement_files import FileRefused, check_delivery
from .clearing_records import (
    MAX_REASON_CHARS,
    Chargeback,
    ClearingCode,
    Closed,
    HeldWindow,
    Ingested,
    Outcome,
    Participant,
    Rejection,
    SettlementReport,
    Statement,
    settle,
    window_key,
)

MAX_PARTICIPANTS = 1000  # hundreds of cities, the issue says
MAX_FILES_PER_DELIVERY = MAX_PARTICIPANTS
# a cleared record's value in _cleared: window serial, acquirer, issuer and amount in one int
_AMOUNT_BITS, _CITY_BITS = 32, 16


def _whole_file(cols: Columns, issuers: dict[str, tuple[int, tuple[str, ...] | None]], cleared: dict[str, int],
                new: dict[str, int], floor: str, top: str) -> str | None:
    """A file of one known issuer whose records all clear: added to ``new``, its issuer returned.
    None (and nothing added) when any record would be rejected: the per-record loop then says why."""
    names = set(cols.issuers)
    found = issuers.get(names.pop()) if len(names) == 1 else None
    if found is None:
        return None
    base, prefixes = found
    rids, whens = cols.record_ids, cols.whens
    if prefixes is not None and not all(map(str.startswith, cols.cards, repeat(prefixes))):
        return None
    if not (cleared.keys().isdisjoint(rids) and new.keys().isdisjoint(rids)):
        return None
    if min(whens)[:8] <= floor or max(whens)[:8] > top:
        return None
    fresh = dict(zip(rids, map(base.__or__, cols.amounts), strict=True))
    if len(fresh) != len(rids):  # a record twice in the file
        return None
    new.update(fresh)
    return cols.issuers[0]


class ClearingHouse:
    def __init__(self, retain_windows: int = 7, max_records_per_window: int = 5_000_000) -> None:
        if not 1 <= retain_windows <= 366:
            raise ValueError(f"retain_windows must be 1..366, got {retain_windows}")
        if not 1 <= max_records_per_window <= 100_000_000:
            raise ValueError(f"max_records_per_window must be 1..100000000, got {max_records_per_window}")
        self.retain_windows = retain_windows
        self.max_records_per_window = max_records_per_window
        self._participants: dict[str, Participant] = {}
        self._cities: list[str] = []
        self._windows: dict[str, HeldWindow] = {}  # held windows, by name
        self._floor = ""  # key of the newest dropped window: nothing at or before it is accepted
        self._serial = 0
        self._by_serial: dict[int, HeldWindow] = {}
        self._cleared: dict[str, int] = {}  # record id -> packed (window serial, acquirer, issuer, amount)
        self._charged: set[str] = set()
        self._pending: list[Chargeback] = []
        self._unsettled: dict[str, set[str]] = {}  # participant -> closed windows it was over its cap in

    # -- participants ---------------------------------------------------------------------
    def register(self, city: str, public_key: Ed25519PublicKey, net_debit_cap_fen: int, rate_bp: int,
                 card_prefixes: tuple[str, ...] = ()) -> Participant:
        if city in self._participants:
            raise ValueError(f"{city} is registered already")
        if len(self._participants) >= MAX_PARTICIPANTS:
            raise ValueError(f"at most {MAX_PARTICIPANTS} participants")
        p = Participant(city, public_key, net_debit_cap_fen, rate_bp, tuple(card_prefixes), len(self._cities))
        self._participants[city] = p
        self._cities.append(city)
        return p

    @property
    def suspended(self) -> frozenset[str]:
        """Participants over their cap in a closed window they have not settled: their cards are
        refused stand-in elsewhere."""
        return frozenset(p for p, windows in self._unsettled.items() if windows)

    def stand_in_allowed(self, issuer: str) -> bool:
        return issuer in self._participants and not self._unsettled.get(issuer)

    # -- windows --------------------------------------------------------------------------
    def _window(self, window: str) -> tuple[HeldWindow | None, Outcome]:
        """The held window, opening it if new (and dropping the oldest if the horizon is full)."""
        try:
            key = window_key(window)
        except ValueError as exc:
            return None, Outcome(ClearingCode.WRONG_WINDOW, str(exc))
        w = self._windows.get(window)
        if w is not None:
            return w, Outcome(ClearingCode.OK)
        if key <= self._floor:
            return None, Outcome(ClearingCode.WINDOW_TOO_OLD, f"window {window} is at or before the horizon"
                                 f" ({self._floor}): its record ids are no longer kept")
        if len(self._windows) >= self.retain_windows:
            oldest = min(self._windows.values(), key=lambda x: x.key)
            if key < oldest.key:
                return None, Outcome(ClearingCode.WINDOW_TOO_OLD, f"window {window} is older than every one of"
                                     f" the {self.retain_windows} retained windows")
            if oldest.report is None:
                return None, Outcome(ClearingCode.HORIZON_FULL, f"opening {window} would drop window"
                                     f" {oldest.name}, still open: close it first")
            self._drop(oldest)
        self._serial += 1
        w = HeldWindow(window, key, self._serial)
        self._windows[window] = w
        self._by_serial[w.serial] = w
        return w, Outcome(ClearingCode.OK)

    def _drop(self, w: HeldWindow) -> None:
        cleared, charged = self._cleared, self._charged
        for rid in w.record_ids:
            del cleared[rid]
            charged.discard(rid)
        del self._windows[w.name], self._by_serial[w.serial]
        self._floor = max(self._floor, w.key)

    # -- deliveries -----------------------------------------------------------------------
    def ingest(self, sender: str, window: str, manifest_bytes: bytes, signature: bytes,
               files: Mapping[str, bytes]) -> Ingested:
        p = self._participants.get(sender)
        if p is None:
            return Ingested(ClearingCode.UNKNOWN_SENDER, f"{sender!r} is not a participant")
        if len(files) > MAX_FILES_PER_DELIVERY:
            return Ingested(ClearingCode.BAD_MANIFEST, f"{len(files)} files, at most {MAX_FILES_PER_DELIVERY}")
        try:
            key = window_key(window)
        except ValueError as exc:
            return Ingested(ClearingCode.WRONG_WINDOW, str(exc))
        if key <= self._floor:
            return Ingested(ClearingCode.WINDOW_TOO_OLD, f"window {window} is at or before the horizon"
                            f" ({self._floor}): its record ids are no longer kept")
        held = self._windows.get(window)
        if held is not None and held.report is not None:
            return Ingested(ClearingCode.WINDOW_CLOSED, f"window {window} is closed")
        if held is not None and sender in held.deliveries:  # refused before the costly checks
            again = held.deliveries[sender] == hashlib.sha256(manifest_bytes).hexdigest()
            return Ingested(ClearingCode.DUPLICATE_FILE, f"{sender} delivered window {window} already"
                            + (" (the same delivery)" if again else " (another delivery: one per window)"))
        try:
            p.public_key.verify(signature, manifest_bytes)
        except InvalidSignature:
            return Ingested(ClearingCode.BAD_SIGNATURE, f"the manifest's signature does not check with {sender}'s key")
        parsed: dict[str, Columns] = {}

        def tally(data: bytes, name: str) -> tuple[int, int]:
            cols = parsed[name] = parse_columns(data, name, sender, window)
            return len(cols.amounts), cols.sum_fen

        try:
            body = check_delivery(p.public_key, manifest_bytes, signature, files, tally)
        except WindowRefused as exc:
            return Ingested(ClearingCode.WRONG_WINDOW, str(exc))
        except FileRefused as exc:
            return Ingested(ClearingCode.BAD_MANIFEST, str(exc))
        except (KeyError, TypeError, AttributeError) as exc:  # JSON of the wrong shape
            return Ingested(ClearingCode.BAD_MANIFEST, f"the manifest is malformed ({exc!r})")
        if body.get("sender") != sender:
            return Ingested(ClearingCode.BAD_MANIFEST, f"the manifest names sender {body.get('sender')!r},"
                            f" the delivery came from {sender}")
        if body.get("window") != window:
            return Ingested(ClearingCode.WRONG_WINDOW, f"the manifest is for window {body.get('window')!r},"
                            f" the delivery for {window}")
        total, held_n = sum(len(c.amounts) for c in parsed.values()), len(held.record_ids) if held else 0
        if held_n + total > self.max_records_per_window:
            return Ingested(ClearingCode.WINDOW_FULL, f"window {window} holds {held_n} records, {total} more"
                            f" would pass max_records_per_window={self.max_records_per_window}")
        w, opened = self._window(window)  # may drop the oldest window: only after every check passed
        if w is None:
            return Ingested(opened.code, opened.reason)
        return self._clear(p, w, [parsed[n] for n in sorted(parsed)], hashlib.sha256(manifest_bytes).hexdigest())

    def _clear(self, acq: Participant, w: HeldWindow, files: list[Columns], digest: str) -> Ingested:
        """Each record cleared or rejected; nothing is kept until every file is through."""
        base_acq = (w.serial << (_AMOUNT_BITS + 2 * _CITY_BITS)) | (acq.index << (_AMOUNT_BITS + _CITY_BITS))
        issuers = {c: (base_acq | (p.index << _AMOUNT_BITS), p.card_prefixes or None)
                   for c, p in self._participants.items() if c != acq.city}
        sums = dict.fromkeys(issuers, 0)
        counts = dict.fromkeys(issuers, 0)
        cleared, floor, top = self._cleared, self._floor, w.key
        new: dict[str, int] = {}
        rejected = []
        for cols in files:
            whole = _whole_file(cols, issuers, cleared, new, floor, top)
            if whole is not None:  # the common case, checked and cleared in bulk (C-level loops)
                sums[whole] += cols.sum_fen
                counts[whole] += len(cols.amounts)
                continue
            for rid, iss, card, amount, when in zip(cols.record_ids, cols.issuers, cols.cards, cols.amounts,
                                                    cols.whens, strict=True):
                found = issuers.get(iss)
                if found is None:
                    rejected.append(self._refusal(rid, iss, acq.city))
                    continue
                base, prefixes = found
                if prefixes is not None and not card.startswith(prefixes):
                    rejected.append(Rejection(rid, ClearingCode.UNKNOWN_ISSUER,
                                              f"card {card} is outside issuer {iss}'s prefixes"))
                    continue
                if rid in cleared or rid in new:
                    rejected.append(Rejection(rid, ClearingCode.DUPLICATE_RECORD, self._seen_where(rid, new)))
                    continue
                day = when[:8]
                if day <= floor:
                    rejected.append(Rejection(rid, ClearingCode.WINDOW_TOO_OLD, f"tapped {day}, at or before the"
                                              f" horizon {floor}: it may have been cleared in a dropped window"))
                    continue
                if day > top:
                    rejected.append(Rejection(rid, ClearingCode.WRONG_WINDOW, f"tapped {day}, after window {w.name}"))
                    continue
                new[rid] = base | amount
                sums[iss] += amount
                counts[iss] += 1
        cleared.update(new)
        w.record_ids.extend(new)
        for iss, n in counts.items():
            if n:
                pair = w.sales.setdefault((iss, acq.city), [0, 0])
                pair[0] += sums[iss]
                pair[1] += n
        w.deliveries[acq.city] = digest
        return Ingested(ClearingCode.OK, "", len(new), tuple(rejected))

    def _refusal(self, rid: str, iss: str, acq: str) -> Rejection:
        if iss == acq:
            return Rejection(rid, ClearingCode.HOME_TAP, f"issuer {iss} is the acquirer: settled inside the city")
        return Rejection(rid, ClearingCode.UNKNOWN_ISSUER, f"issuer {iss!r} is not a participant")

    def _seen_where(self, rid: str, new: dict[str, int]) -> str:
        if rid in new:
            return f"{rid} twice in this delivery"
        return f"{rid} was cleared in window {self._by_serial[self._cleared[rid] >> 64].name}"

    # -- issuers' verdicts ----------------------------------------------------------------
    def reject(self, issuer: str, record_id: str, reason: str) -> Outcome:
        """The issuer refuses a cleared record (a TAC that does not check, ...): it comes back as
        a chargeback, the acquirer owing its issuer, in the first window closed after this whose
        date is later than the record's window. Once per record."""
        if not 0 < len(reason) <= MAX_REASON_CHARS:
            raise ValueError(f"a rejection's reason is 1..{MAX_REASON_CHARS} characters")
        packed = self._cleared.get(record_id)
        if packed is None:
            return Outcome(ClearingCode.UNKNOWN_RECORD, f"{record_id} was not cleared in a retained window")
        mask = (1 << _CITY_BITS) - 1
        w = self._by_serial[packed >> 64]
        acq = self._cities[(packed >> (_AMOUNT_BITS + _CITY_BITS)) & mask]
        iss = self._cities[(packed >> _AMOUNT_BITS) & mask]
        if issuer != iss:
            return Outcome(ClearingCode.NOT_ISSUER, f"{record_id} is {iss}'s card, not {issuer}'s")
        if record_id in self._charged:
            return Outcome(ClearingCode.DUPLICATE_CHARGEBACK, f"{record_id} was rejected already")
        self._charged.add(record_id)
        self._pending.append(Chargeback(record_id, iss, acq, packed & ((1 << _AMOUNT_BITS) - 1), w.key, reason))
        return Outcome(ClearingCode.OK, reason)

    # -- closing and settling -------------------------------------------------------------
    def close(self, window: str) -> Closed:
        """Net the window. Idempotent: a closed window's report is returned again, unchanged."""
        w, opened = self._window(window)
        if w is None:
            return Closed(opened.code, opened.reason)
        if w.report is None:
            due = [c for c in self._pending if c.record_window_key < w.key]
            self._pending = [c for c in self._pending if c.record_window_key >= w.key]
            w.report = self._report(w, due)
            for p in w.report.suspended:
                self._unsettled.setdefault(p, set()).add(window)
        return Closed(ClearingCode.OK, "", w.report)

    def _report(self, w: HeldWindow, chargebacks: list[Chargeback]) -> SettlementReport:
        ps = self._participants.values()
        return settle(w.name, list(self._cities), {p.city: p.rate_bp for p in ps},
                      {p.city: p.net_debit_cap_fen for p in ps}, w.sales, chargebacks)

    def settled(self, participant: str, window: str) -> Outcome:
        """``participant`` has paid its debit of ``window``: a suspension for it is lifted."""
        if participant not in self._participants:
            return Outcome(ClearingCode.UNKNOWN_SENDER, f"{participant!r} is not a participant")
        owing = self._unsettled.get(participant, set())
        if window in owing:
            owing.discard(window)
            return Outcome(ClearingCode.OK)
        w = self._windows.get(window)
        if w is None:
            return Outcome(ClearingCode.UNKNOWN_WINDOW, f"window {window} is not held")
        if w.report is None:
            return Outcome(ClearingCode.WINDOW_OPEN, f"window {window} is not closed")
        return Outcome(ClearingCode.OK)

    def statement(self, city: str, window: str) -> Statement | None:
        """``city``'s figures for ``window``: final once closed, provisional (no chargebacks yet)
        while open; None for a city or window not held."""
        w = self._windows.get(window)
        if w is None or city not in self._participants:
            return None
        report = w.report if w.report is not None else self._report(w, [])
        return report.statements[city]

    def report(self, window: str) -> SettlementReport | None:
        w = self._windows.get(window)
        return None if w is None else w.report
