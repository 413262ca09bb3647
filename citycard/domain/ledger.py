"""The shard's ledger state machine: applies batches of taps, one result per tap.

Pure and deterministic: the same cards, table and batches give the same outcomes and rows.
The caller (an AccountShard actor) makes the rows durable before it answers anyone.

One concept, kept in one module on purpose (over 400 lines): the ledger's state and its
inline tap path read best side by side; the fare rules themselves are in rules.py.
"""

from collections import deque
from collections.abc import Sequence

import msgspec

from .cards import CardState, CardStatus
from .changed_cards import ChangedCards, SnapshotRow, snapshot_row
from .ops import (
    OP_KIND,
    CardOp,
    Credit,
    OpOutcome,
    Refund,
    TopUp,
    TransferOut,
    apply_op_effects,
    decide_op,
    decode_op,
    encode_op,
    moved_from,
)
from .purses import N_PURSES, Purse, funding_order
from .results import Result
from .rules import (
    RECENT_TERMINALS,
    apply_effects,
    decide,
    home_ride_fare,
    local_day,
    member_percent,
    passback_mode,
    passback_window_ms,
)
from .tables import CompiledVersion, FareTables
from .taps import (
    MAX_CARD_NO,
    MAX_SEQ,
    MAX_TERMINAL_ID,
    JournalRow,
    Outcome,
    Tap,
    TapKind,
    dedupe_key,
)

_OK = int(Result.OK)
_ACTIVE = int(CardStatus.ACTIVE)
_BLOCKED = int(Result.CARD_BLOCKED)
_BAD_TAP = int(Result.BAD_TAP)
_DUPLICATE_SEQ = int(Result.DUPLICATE_SEQ)
_SEQ_TOO_OLD = int(Result.SEQ_TOO_OLD)
_CARD_UNKNOWN = int(Result.CARD_UNKNOWN)
_BUS = int(TapKind.BUS)
_WATER_BUS = int(TapKind.WATER_BUS)
_TAXI = int(TapKind.TAXI)
_PETROL = int(TapKind.PETROL)
_MERCHANT = int(TapKind.MERCHANT)
_INSUFFICIENT_FUNDS = int(Result.INSUFFICIENT_FUNDS)
_ALLOWANCE = int(Purse.ALLOWANCE)
_VOUCHER = int(Purse.VOUCHER)
# Kinds the ledger decides inline for home cards (see ``Ledger.apply``): each one's payment
# only moves money between purses (plus the anti-passback memory), in this funding order:
# [allowance while valid], e-purse, [general]. Merchants: vouchers first, so a card holding
# any takes the general path. Checked here so a change to the funding orders cannot make the
# inline path disagree with the rules unnoticed.
_INLINE_ORDERS = {
    _BUS: (Purse.ALLOWANCE, Purse.EPURSE), _WATER_BUS: (Purse.ALLOWANCE, Purse.EPURSE),
    _TAXI: (Purse.ALLOWANCE, Purse.EPURSE), _PETROL: (Purse.ALLOWANCE, Purse.EPURSE, Purse.GENERAL),
    _MERCHANT: (Purse.VOUCHER, Purse.EPURSE, Purse.GENERAL),
}
if any(funding_order(k) != order for k, order in _INLINE_ORDERS.items()):
    raise RuntimeError("funding orders changed: update Ledger.apply's inline path")
_INLINE_KINDS = frozenset(_INLINE_ORDERS)
_FROM_ALLOWANCE = frozenset((_BUS, _WATER_BUS, _TAXI, _PETROL))
_FROM_GENERAL = frozenset((_PETROL, _MERCHANT))
_FARE_MEMO_MAX = 100_000  # memoized ride fares per fare version (routes come from terminals)
_SEEN_STRIPES = 64  # a power of two: the stripe is the key's low bits (the seq's)
_SEEN_MASK = _SEEN_STRIPES - 1
_ISSUER_DIV = 10**11  # cards.issuer_of
# Any status but ACTIVE refuses; one we do not know refuses as blocked, never charges.
_STATUS_RESULT = {int(CardStatus.CANCELLED): int(Result.CARD_CANCELLED)}


class Ledger:
    """Cards of one shard plus the dedupe memory of recent (terminal, seq) outcomes.

    Dedupe is bounded: the newest ``dedupe_limit`` decisions are remembered (evicted at the end
    of each batch, so up to one batch more); for older seqs a per-terminal watermark answers
    SEQ_TOO_OLD, so an old retry is never charged again.
    """

    def __init__(self, shard_id: int, tables: FareTables, dedupe_limit: int = 1_000_000,
                 inline: bool = True) -> None:
        if dedupe_limit < 1:
            raise ValueError("dedupe_limit must be >= 1")
        # Home cards' rides and amount payments are decided inline (same outcome as
        # rules.decide + apply_effects; tests compare the two paths).
        self.inline = inline
        self.shard_id = shard_id
        self.tables = tables
        self.dedupe_limit = dedupe_limit
        self.cards: dict[int, CardState] = {}
        self.lsn = 0  # last journal position applied in this shard
        # dedupe key -> (card_no, result, fare_fen, balance_after_fen), striped by the key's low
        # bits: once full, each insert comes with a delete, and CPython rebuilds a dict whole when
        # deleted slots fill its table; one 2 M-entry dict paused ~100 ms, a stripe pauses 1/64.
        self._seen: list[dict[int, tuple[int, int, int, int]]] = [{} for _ in range(_SEEN_STRIPES)]
        self._seen_order: deque[int] = deque()
        self._watermark: dict[int, int] = {}  # terminal_id -> highest evicted seq
        self.snapshots = ChangedCards(self.cards)  # changed cards, and the snapshot in progress
        # card services: op key -> (lsn, encoded op, outcome), oldest first; older keys are
        # looked up in the journal by the caller (``unknown_op_keys`` / ``remember_op``)
        self._ops: dict[str, tuple[int, bytes, OpOutcome]] = {}
        self.op_memory_limit = dedupe_limit

    # -- loading -------------------------------------------------------------------------
    def add_card(self, card: CardState) -> None:
        self.cards[card.card_no] = card

    def replay(self, row: JournalRow, apply_effect: bool) -> None:
        """Rebuild from a journal row (in lsn order). ``apply_effect`` is False for rows the
        snapshot already includes: they only refill the dedupe memory."""
        if row.op is not None:
            self._replay_op(row, apply_effect)
        elif apply_effect and row.result == _OK:
            card = self.cards.get(row.card_no)
            if card is not None:
                deltas = (row.d_epurse, row.d_general, row.d_voucher, row.d_allowance, row.d_medical, row.d_deposit)
                t = row.tap_time_ms
                apply_effects(card, row.kind, row.route, row.terminal_id, t, deltas, row.concession,
                              local_day(self.tables, t), passback_mode(self.tables, row.kind, t))
                self.snapshots.dirty.add(row.card_no)
        if row.op is None:
            self._remember_tap(row)
        if row.lsn > self.lsn:
            self.lsn = row.lsn

    def _remember_tap(self, row: JournalRow) -> None:
        self._remember(
            dedupe_key(row.terminal_id, row.seq),
            (row.card_no, row.result, row.amount_fen, row.balance_after_fen),
        )

    def raise_watermark(self, terminal_id: int, seq: int) -> None:
        """Seqs up to ``seq`` of this terminal are older than the dedupe memory (recovery)."""
        if seq > self._watermark.get(terminal_id, 0):
            self._watermark[terminal_id] = seq

    # -- the tap path --------------------------------------------------------------------
    def apply(self, taps: Sequence[Tap], now_ms: int) -> tuple[list[Outcome], list[JournalRow]]:
        # The hot loop: locals only, no per-tap helper calls (this runs ~10^5 times a second).
        # Long on purpose (over 70 lines): splitting it costs a call per tap; the property tests
        # (tests/unit/test_domain_ledger_properties.py) hold it to the plain rules path.
        outcomes: list[Outcome] = []
        rows: list[JournalRow] = []
        out = outcomes.append
        row = rows.append
        seen = self._seen
        order = self._seen_order
        watermark = self._watermark
        cards = self.cards
        tables = self.tables
        inline = self.inline
        home_lo = tables.home_issuer * _ISSUER_DIV  # home cards: issuer_of(card_no) == home_issuer
        home_hi = home_lo + _ISSUER_DIV
        # the fare version of the last inline tap, and its lookups as locals
        ver: CompiledVersion | None = None
        ver_from_ms = ver_end_ms = version = max_amount_fen = 0
        fares: dict[tuple[int, int, int, bool], int] = {}
        windows: dict[int, int] = {}
        lsn = self.lsn
        snapshots = self.snapshots
        snap = snapshots.pending
        for tap in taps:
            terminal_id = tap.terminal_id
            seq = tap.seq
            card_no = tap.card_no
            time_ms = tap.time_ms
            if snap and card_no in snap:
                snapshots.before_change(card_no)
            if not (0 < terminal_id <= MAX_TERMINAL_ID and 0 < seq <= MAX_SEQ
                    and 0 < card_no <= MAX_CARD_NO and time_ms >= 0):
                out(Outcome(_BAD_TAP, 0, -1, False))  # before dedupe: could alias a key
                continue
            key = (terminal_id << 32) | seq
            stripe = seen[key & _SEEN_MASK]
            prior = stripe.get(key)
            if prior is not None:
                if prior[0] == card_no:
                    out(Outcome(prior[1], prior[2], prior[3], True))
                else:
                    out(Outcome(_DUPLICATE_SEQ, 0, -1, False))
                continue
            if watermark and seq <= watermark.get(terminal_id, 0):
                out(Outcome(_SEQ_TOO_OLD, 0, -1, False))
                continue
            card = cards.get(card_no)
            fare_fen = 0
            d = None
            if card is None:
                result = _CARD_UNKNOWN
                balance_fen = -1
            elif tap.hotlisted:
                result = _BLOCKED
                balance_fen = card.purses[0]
            elif card.status != _ACTIVE:
                result = _STATUS_RESULT.get(card.status, _BLOCKED)
                balance_fen = card.purses[0]
            else:
                kind = tap.kind
                if inline and kind in _INLINE_KINDS and home_lo <= card_no < home_hi:
                    if not ver_from_ms <= time_ms < ver_end_ms:
                        ver = tables.at(time_ms)
                        if ver is None:
                            ver_from_ms = ver_end_ms = 0
                        else:
                            ver_from_ms, ver_end_ms, version = ver.effective_from_ms, ver.end_ms, ver.version
                            max_amount_fen = ver.v.max_amount_fen
                            fares = ver.inline_fares
                            windows = {k: passback_window_ms(ver, k) for k in _INLINE_KINDS}
                    # the price: -1 when the general path must decide (refusals, ride limits)
                    fare_fen = -1
                    route = tap.route
                    if ver is None or ver_end_ms == 0:
                        pass
                    elif kind == _BUS or kind == _WATER_BUS:
                        if route > 0:
                            mp = card.monthly_pass
                            fare_key = (kind, route, card.category, mp is not None and mp[0] <= time_ms < mp[1])
                            fare_fen = fares.get(fare_key, -2)
                            if fare_fen == -2:
                                fare_fen = home_ride_fare(ver, kind, route, fare_key[2], fare_key[3])
                                if len(fares) >= _FARE_MEMO_MAX:
                                    fares.clear()
                                fares[fare_key] = fare_fen
                    elif 0 < tap.amount_fen <= max_amount_fen:
                        if kind != _MERCHANT:
                            fare_fen = tap.amount_fen
                        elif not card.purses[_VOUCHER]:
                            pct = member_percent(ver, route, card.apps, time_ms)
                            fare_fen = tap.amount_fen if pct == 100 else (tap.amount_fen * pct + 50) // 100
                    window_ms = windows[kind] if fare_fen >= 0 else -1
                    recent = card.recent
                    last_ms = recent.get(terminal_id) if recent and window_ms >= 0 else None
                    if fare_fen >= 0 and (last_ms is None or abs(time_ms - last_ms) >= window_ms):
                        # fund it as purses.fund does, in _INLINE_ORDERS
                        purses = card.purses
                        left = fare_fen
                        from_allowance = from_general = 0
                        if kind in _FROM_ALLOWANCE and left > 0 and purses[_ALLOWANCE] > 0:
                            until = card.allowance_until_ms
                            if until == 0 or time_ms < until:
                                from_allowance = min(purses[_ALLOWANCE], left)
                                left -= from_allowance
                        from_epurse = min(purses[0], left) if purses[0] > 0 else 0
                        left -= from_epurse
                        if left > 0 and kind in _FROM_GENERAL and purses[1] > 0:
                            from_general = min(purses[1], left)
                            left -= from_general
                        lsn += 1
                        if left > 0:
                            balance_fen = purses[0]
                            row(JournalRow(lsn, terminal_id, seq, card_no, kind, route, time_ms, now_ms,
                                           _INSUFFICIENT_FUNDS, 0, balance_fen, tap.amount_fen, tap.bill_class, 0,
                                           version, -1, 0, 0, 0, 0, 0, 0))
                            stripe[key] = (card_no, _INSUFFICIENT_FUNDS, 0, balance_fen)
                            order.append(key)
                            out(Outcome(_INSUFFICIENT_FUNDS, 0, balance_fen, False))
                            continue
                        if from_allowance:
                            purses[_ALLOWANCE] -= from_allowance
                        if from_general:
                            purses[1] -= from_general
                        balance_fen = purses[0] = purses[0] - from_epurse
                        if window_ms >= 0:  # the anti-passback memory, as rules.apply_effects keeps it
                            if recent is None:
                                recent = card.recent = {}
                            if last_ms is None:
                                recent[terminal_id] = time_ms
                                if len(recent) > RECENT_TERMINALS:
                                    del recent[next(iter(recent))]
                            elif time_ms > last_ms:
                                del recent[terminal_id]
                                recent[terminal_id] = time_ms
                        row(JournalRow(lsn, terminal_id, seq, card_no, kind, route, time_ms, now_ms, _OK,
                                       fare_fen, balance_fen, tap.amount_fen, tap.bill_class, 0, version, -1,
                                       -from_epurse, -from_general, 0, -from_allowance, 0, 0))
                        stripe[key] = (card_no, _OK, fare_fen, balance_fen)
                        order.append(key)
                        out(Outcome(_OK, fare_fen, balance_fen, False))
                        continue
                    fare_fen = 0
                d = decide(tables, card, tap)
                result = d.result
                if result == _OK:
                    fare_fen = d.fare_fen
                    apply_effects(card, tap.kind, tap.route, terminal_id, time_ms, d.deltas, d.concession,
                                  d.day, d.passback)
                balance_fen = card.purses[0]
            lsn += 1
            if d is None or result != _OK:
                row(JournalRow(lsn, terminal_id, seq, card_no, tap.kind, tap.route, time_ms, now_ms,
                                      result, 0, balance_fen, tap.amount_fen, tap.bill_class, 0,
                                      0 if d is None else d.version, -1, 0, 0, 0, 0, 0, 0))
            else:
                dl = d.deltas
                row(JournalRow(lsn, terminal_id, seq, card_no, tap.kind, tap.route, time_ms, now_ms,
                                      result, fare_fen, balance_fen, tap.amount_fen, tap.bill_class, d.fund_fen,
                                      d.version, d.concession, dl[0], dl[1], dl[2], dl[3], dl[4], dl[5]))
            stripe[key] = (card_no, result, fare_fen, balance_fen)
            order.append(key)
            out(Outcome(result, fare_fen, balance_fen, False))
        self.lsn = lsn
        if rows:
            snapshots.dirty.update([r.card_no for r in rows])
        if len(order) > self.dedupe_limit:
            self._evict()
        return outcomes, rows

    # -- card services -------------------------------------------------------------------
    def unknown_op_keys(self, keys: Sequence[str]) -> list[str]:
        """Keys this ledger does not remember: the caller looks them up in the journal."""
        return [k for k in keys if k not in self._ops]

    def remember_op(self, row: JournalRow) -> None:
        """An op row found in the journal (older than the op memory): its key answers again."""
        if row.op_key is not None and row.op is not None and row.op_key not in self._ops:
            self._ops[row.op_key] = (row.lsn, row.op, self._outcome_of(row, decode_op(row.op)))

    def apply_ops(self, ops: Sequence[CardOp], now_ms: int) -> tuple[list[OpOutcome], list[JournalRow]]:
        """Apply card-service ops in order, each at most once per key. A key reused for a
        different op answers DUPLICATE_SEQ and changes nothing."""
        outcomes: list[OpOutcome] = []
        rows: list[JournalRow] = []
        memory = self._ops
        for op in ops:
            enc = encode_op(op)
            prior = memory.get(op.key)
            if prior is not None:
                if prior[1] == enc:
                    outcomes.append(msgspec.structs.replace(prior[2], replay=True))
                else:
                    outcomes.append(OpOutcome(_DUPLICATE_SEQ))
                continue
            pending = self.snapshots.pending
            if pending and op.card_no in pending:
                self.snapshots.before_change(op.card_no)
            card = self.cards.get(op.card_no)
            result, deltas, moved = decide_op(card, op)
            if result == _OK:
                assert card is not None
                apply_op_effects(card, op, deltas)
            else:
                deltas = (0,) * N_PURSES
            balance_fen = card.purses[0] if card is not None else -1
            self.lsn += 1
            amount = op.amount_fen if isinstance(op, (TopUp, Refund, Credit)) else 0
            rows.append(JournalRow(self.lsn, 0, 0, op.card_no, OP_KIND[type(op)], 0, now_ms, now_ms, int(result),
                                   -sum(deltas), balance_fen, amount, 0, 0, 0, -1, deltas[0], deltas[1], deltas[2],
                                   deltas[3], deltas[4], deltas[5], op.key, enc))
            outcome = OpOutcome(int(result), deltas, balance_fen, moved)
            memory[op.key] = (self.lsn, enc, outcome)
            outcomes.append(outcome)
        if rows:
            self.snapshots.dirty.update([r.card_no for r in rows])
        return outcomes, rows

    def evict_ops(self, committed_lsn: int) -> None:
        """Forget the oldest op keys beyond the limit once their rows are committed (a lookup
        in the journal then finds them)."""
        memory = self._ops
        while len(memory) > self.op_memory_limit:
            key = next(iter(memory))
            if memory[key][0] > committed_lsn:
                break
            del memory[key]

    def _replay_op(self, row: JournalRow, apply_effect: bool) -> None:
        assert row.op is not None and row.op_key is not None
        op = decode_op(row.op)
        card = self.cards.get(row.card_no)
        if apply_effect and row.result == _OK and card is not None:
            apply_op_effects(card, op, _row_deltas(row))
            self.snapshots.dirty.add(row.card_no)
        self._ops[row.op_key] = (row.lsn, row.op, self._outcome_of(row, op))

    def _outcome_of(self, row: JournalRow, op: CardOp) -> OpOutcome:
        deltas = _row_deltas(row)
        moved = None
        card = self.cards.get(row.card_no)
        if row.result == _OK and isinstance(op, TransferOut) and card is not None:
            moved = moved_from(card, tuple(-d for d in deltas))  # a replaced card never changes again
        return OpOutcome(row.result, deltas, row.balance_after_fen, moved)

    # -- views ---------------------------------------------------------------------------
    def balances(self) -> dict[int, int]:
        """Each card's money over all its purses (deposits held included)."""
        return {c.card_no: sum(c.purses) for c in self.cards.values()}

    def total_balance_fen(self) -> int:
        return sum(sum(c.purses) for c in self.cards.values())

    def snapshot_rows(self) -> list[SnapshotRow]:
        """A row for every card, as of ``self.lsn`` (``snapshots`` has the changed ones only)."""
        return [snapshot_row(c) for c in self.cards.values()]

    def dedupe_size(self) -> int:
        return sum(len(stripe) for stripe in self._seen)

    def _remember(self, key: int, value: tuple[int, int, int, int]) -> None:
        stripe = self._seen[key & _SEEN_MASK]
        if key not in stripe:
            self._seen_order.append(key)
        stripe[key] = value
        self._evict()

    def _evict(self) -> None:
        seen = self._seen
        order = self._seen_order
        while len(order) > self.dedupe_limit:
            old = order.popleft()
            del seen[old & _SEEN_MASK][old]
            self.raise_watermark(old >> 32, old & MAX_SEQ)


def _row_deltas(row: JournalRow) -> tuple[int, ...]:
    return (row.d_epurse, row.d_general, row.d_voucher, row.d_allowance, row.d_medical, row.d_deposit)
