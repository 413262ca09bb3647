"""The shard's ledger state machine: applies batches of taps, one result per tap.

Pure and deterministic: the same cards, table and batches give the same outcomes and rows.
The caller (an AccountShard actor) makes the rows durable before it answers anyone.
"""

from collections import deque
from collections.abc import Sequence

from .cards import CardState, CardStatus
from .fares import FareTable
from .results import Result
from .taps import MAX_CARD_NO, MAX_SEQ, MAX_TERMINAL_ID, JournalRow, Outcome, Tap, dedupe_key

_OK = int(Result.OK)
_ACTIVE = int(CardStatus.ACTIVE)
_BLOCKED = int(Result.CARD_BLOCKED)
# Any status but ACTIVE refuses; one we do not know refuses as blocked, never charges.
_STATUS_RESULT = {int(CardStatus.CANCELLED): int(Result.CARD_CANCELLED)}


class Ledger:
    """Cards of one shard plus the dedupe memory of recent (terminal, seq) outcomes.

    Dedupe is bounded: the oldest ``dedupe_limit`` decisions are remembered; for older seqs a
    per-terminal watermark answers SEQ_TOO_OLD, so an old retry is never charged again.
    """

    def __init__(self, shard_id: int, fares: FareTable, dedupe_limit: int = 1_000_000) -> None:
        if dedupe_limit < 1:
            raise ValueError("dedupe_limit must be >= 1")
        self.shard_id = shard_id
        self.fares = fares
        self.dedupe_limit = dedupe_limit
        self.cards: dict[int, CardState] = {}
        self.lsn = 0  # last journal position applied in this shard
        # dedupe key -> (card_no, result, fare_fen, balance_after_fen)
        self._seen: dict[int, tuple[int, int, int, int]] = {}
        self._seen_order: deque[int] = deque()
        self._watermark: dict[int, int] = {}  # terminal_id -> highest evicted seq

    # -- loading -------------------------------------------------------------------------
    def add_card(self, card: CardState) -> None:
        self.cards[card.card_no] = card

    def replay(self, row: JournalRow, apply_effect: bool) -> None:
        """Rebuild from a journal row (in lsn order). ``apply_effect`` is False for rows the
        snapshot already includes: they only refill the dedupe memory."""
        if apply_effect:
            card = self.cards.get(row.card_no)
            if card is not None and row.amount_fen:
                card.balance_fen -= row.amount_fen
        self._remember(
            dedupe_key(row.terminal_id, row.seq),
            (row.card_no, row.result, row.amount_fen, row.balance_after_fen),
        )
        if row.lsn > self.lsn:
            self.lsn = row.lsn

    def raise_watermark(self, terminal_id: int, seq: int) -> None:
        """Seqs up to ``seq`` of this terminal are older than the dedupe memory (recovery)."""
        if seq > self._watermark.get(terminal_id, 0):
            self._watermark[terminal_id] = seq

    # -- the tap path --------------------------------------------------------------------
    def apply(self, taps: Sequence[Tap], now_ms: int) -> tuple[list[Outcome], list[JournalRow]]:
        outcomes: list[Outcome] = []
        rows: list[JournalRow] = []
        seen = self._seen
        cards = self.cards
        price = self.fares.price
        for tap in taps:
            if not _valid_ids(tap):  # before dedupe: out-of-range ids could alias a real key
                outcomes.append(Outcome(Result.BAD_TAP, 0, -1, False))
                continue
            key = dedupe_key(tap.terminal_id, tap.seq)
            prior = seen.get(key)
            if prior is not None:
                if prior[0] == tap.card_no:
                    outcomes.append(Outcome(prior[1], prior[2], prior[3], True))
                else:
                    outcomes.append(Outcome(Result.DUPLICATE_SEQ, 0, -1, False))
                continue
            if tap.seq <= self._watermark.get(tap.terminal_id, 0):
                outcomes.append(Outcome(Result.SEQ_TOO_OLD, 0, -1, False))
                continue
            card = cards.get(tap.card_no)
            fare_fen = 0
            if card is None:
                result = int(Result.CARD_UNKNOWN)
                balance_fen = -1
            else:
                balance_fen = card.balance_fen
                if tap.hotlisted:
                    result = _BLOCKED
                elif card.status != _ACTIVE:
                    result = _STATUS_RESULT.get(card.status, _BLOCKED)
                else:
                    result = _OK
                if result == _OK:
                    result, fare_fen = price(tap)
                    if result == _OK and fare_fen > balance_fen:
                        result = int(Result.INSUFFICIENT_FUNDS)
                    if result == _OK:
                        balance_fen -= fare_fen
                        card.balance_fen = balance_fen
                    else:
                        fare_fen = 0
            self.lsn += 1
            rows.append(
                JournalRow(
                    self.lsn, tap.terminal_id, tap.seq, tap.card_no, tap.kind, tap.route,
                    tap.time_ms, now_ms, result, fare_fen, balance_fen,
                )
            )
            self._remember(key, (tap.card_no, result, fare_fen, balance_fen))
            outcomes.append(Outcome(result, fare_fen, balance_fen, False))
        return outcomes, rows

    # -- views ---------------------------------------------------------------------------
    def balances(self) -> dict[int, int]:
        return {c.card_no: c.balance_fen for c in self.cards.values()}

    def total_balance_fen(self) -> int:
        return sum(c.balance_fen for c in self.cards.values())

    def snapshot_rows(self) -> list[tuple[int, int]]:
        """(card_no, balance_fen) for every card, as of ``self.lsn``."""
        return [(c.card_no, c.balance_fen) for c in self.cards.values()]

    def dedupe_size(self) -> int:
        return len(self._seen)

    def _remember(self, key: int, value: tuple[int, int, int, int]) -> None:
        if key not in self._seen:
            self._seen_order.append(key)
        self._seen[key] = value
        while len(self._seen_order) > self.dedupe_limit:
            old = self._seen_order.popleft()
            del self._seen[old]
            self.raise_watermark(old >> 32, old & MAX_SEQ)


def _valid_ids(tap: Tap) -> bool:
    return (
        0 < tap.terminal_id <= MAX_TERMINAL_ID
        and 0 < tap.seq <= MAX_SEQ
        and 0 < tap.card_no <= MAX_CARD_NO
        and tap.time_ms >= 0
    )
