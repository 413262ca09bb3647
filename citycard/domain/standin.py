"""The acquirer's stand-in, pure (docs/interop.md, "Stand-in when an issuer is down").

When a visiting card's issuer cannot be reached, the acquirer may approve the tap itself, at
its own risk, while the card's stand-in total in the current window stays within the issuer's
floor limit. Each approval is *advice* owed to the issuer: when it is back, the acquirer sends
it, and the issuer accepts (it debits the card and owes the acquirer) or declines (the
acquirer keeps the loss). Nothing here reads a clock: ``now_ms`` comes in.

Windows are fixed, ``[k * window_ms, (k + 1) * window_ms)``; a new window starts every card at
0 fen. The limit is inclusive: a tap taking the card's total to exactly the limit is approved,
one fen more is refused.

Idempotency: a key still pending is answered with its approval again (``replay``), counted
once; a key already settled is the acquirer's store's to recognise (``interop.store.prior``:
it answered that terminal seq before and answers a retry from there, never asking again).
"""

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from .results import Result

DEFAULT_MAX_CARDS = 100_000  # cards with stand-in taps in one window
DEFAULT_MAX_PENDING = 1_000_000  # approved taps awaiting the issuer's word (each one is money)


class StandInCode(IntEnum):
    """The acquirer's own decision on a tap it could not route. Wire-stable: append only."""

    APPROVED = 0  # within the floor limit: answer the terminal OK, advise the issuer later
    OVER_FLOOR_LIMIT = 1  # the card's stand-in total would pass the issuer's floor limit
    ISSUER_SUSPENDED = 2  # the clearing house suspended the issuer (over its net debit cap)
    CARD_HOTLISTED = 3  # on the region's hotlist
    UNKNOWN_ISSUER = 4  # no floor limit for this issuer: no stand-in
    TRACKING_FULL = 5  # max cards for this window reached: refused rather than forget one
    PENDING_FULL = 6  # max advice awaiting the issuers reached
    BAD_AMOUNT = 7  # amount_fen below 0


# What the acquirer answers its terminal. A refusal the issuer might still approve decides
# nothing (BUSY: the terminal retries the same seq, and reaches the issuer once it is back);
# a hotlisted card or a suspended issuer is refused for good.
_TERMINAL_RESULT = {
    StandInCode.APPROVED: Result.OK,
    StandInCode.OVER_FLOOR_LIMIT: Result.BUSY,
    StandInCode.ISSUER_SUSPENDED: Result.ISSUER_NOT_ACCEPTED,
    StandInCode.CARD_HOTLISTED: Result.CARD_BLOCKED,
    StandInCode.UNKNOWN_ISSUER: Result.BUSY,
    StandInCode.TRACKING_FULL: Result.BUSY,
    StandInCode.PENDING_FULL: Result.BUSY,
    StandInCode.BAD_AMOUNT: Result.BAD_TAP,
}


def terminal_result(code: StandInCode) -> Result:
    """The ``Result`` the acquirer answers its terminal with for a stand-in decision."""
    return _TERMINAL_RESULT[code]


class TapKey(NamedTuple):
    """A tap's idempotency key on the link: the acquirer's terminal and its seq."""

    acquirer: str
    terminal_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Decision:
    code: StandInCode
    card_total_fen: int  # the card's stand-in total in the window, after this tap
    remaining_fen: int  # what the floor limit still allows on this card in this window
    replay: bool = False  # the key was approved before: that approval again, counted once


@dataclass(frozen=True, slots=True)
class Advice:
    key: TapKey
    issuer: str
    card_no: int
    amount_fen: int
    time_ms: int


@dataclass(slots=True)
class Risk:
    """Stand-in risk taken on one issuer's cards since start, in count and fen."""

    approved_count: int = 0
    approved_fen: int = 0
    pending_count: int = 0  # approved, the issuer's word not yet in
    pending_fen: int = 0
    declined_count: int = 0  # the issuer refused them: the acquirer's loss
    declined_fen: int = 0


def _never(card_no: int) -> bool:
    return False


class StandIn:
    """Per window and card, the stand-in totals; per issuer, the risk; the advice to send."""

    __slots__ = ("_cards", "_floor_limits", "_pending", "_risk", "_window", "max_cards", "max_pending",
                 "window_ms")

    def __init__(self, floor_limits_fen: Mapping[str, int], window_ms: int, *,
                 max_cards: int = DEFAULT_MAX_CARDS, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if window_ms < 1:
            raise ValueError(f"window_ms must be >= 1, got {window_ms}")
        if max_cards < 1 or max_pending < 1:
            raise ValueError("max_cards and max_pending must be >= 1")
        for code, limit in floor_limits_fen.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"floor limit of {code} must be fen >= 0, got {limit!r}")
        self._floor_limits = dict(floor_limits_fen)
        self.window_ms = window_ms
        self.max_cards = max_cards
        self.max_pending = max_pending
        self._window = -1
        self._cards: dict[int, int] = {}  # card -> stand-in fen in the current window
        self._pending: dict[TapKey, Advice] = {}  # insertion order: oldest advice first
        self._risk: dict[str, Risk] = {}

    def decide(self, key: TapKey, card_no: int, amount_fen: int, issuer: str, now_ms: int, *,
               suspended: Collection[str] = frozenset(),
               hotlisted: Callable[[int], bool] = _never) -> Decision:
        """Approve or refuse one tap the issuer could not be asked about."""
        window = now_ms // self.window_ms
        if window > self._window:  # a new window: every card starts again at 0
            self._window, self._cards = window, {}
        limit = self._floor_limits.get(issuer)
        total = self._cards.get(card_no, 0)
        prior = self._pending.get(key)
        if prior is not None:
            return Decision(StandInCode.APPROVED, total, max(0, (limit or 0) - total), replay=True)
        if limit is None:
            return Decision(StandInCode.UNKNOWN_ISSUER, total, 0)
        remaining = max(0, limit - total)
        refusal = self._refusal(card_no, amount_fen, issuer, limit, total, suspended, hotlisted)
        if refusal is not None:
            return Decision(refusal, total, remaining)
        total += amount_fen
        self._cards[card_no] = total
        self._pending[key] = Advice(key, issuer, card_no, amount_fen, now_ms)
        risk = self._risk.setdefault(issuer, Risk())
        risk.approved_count += 1
        risk.approved_fen += amount_fen
        risk.pending_count += 1
        risk.pending_fen += amount_fen
        return Decision(StandInCode.APPROVED, total, limit - total)

    def _refusal(self, card_no: int, amount_fen: int, issuer: str, limit: int, total: int,
                 suspended: Collection[str], hotlisted: Callable[[int], bool]) -> StandInCode | None:
        if amount_fen < 0:
            return StandInCode.BAD_AMOUNT
        if issuer in suspended:
            return StandInCode.ISSUER_SUSPENDED
        if hotlisted(card_no):
            return StandInCode.CARD_HOTLISTED
        if total + amount_fen > limit:
            return StandInCode.OVER_FLOOR_LIMIT
        if card_no not in self._cards and len(self._cards) >= self.max_cards:
            return StandInCode.TRACKING_FULL
        if len(self._pending) >= self.max_pending:
            return StandInCode.PENDING_FULL
        return None

    def pending_advice(self, issuer: str | None = None, limit: int | None = None) -> list[Advice]:
        """Approved taps the issuer has not yet decided, oldest first (``limit`` of them)."""
        out: list[Advice] = []
        for advice in self._pending.values():
            if limit is not None and len(out) >= limit:
                break
            if issuer is None or advice.issuer == issuer:
                out.append(advice)
        return out

    def is_pending(self, key: TapKey) -> bool:
        """Whether ``key`` is an approval still awaiting the issuer's word."""
        return key in self._pending

    def confirm(self, keys: Iterable[TapKey]) -> int:
        """The issuer accepted these: no longer pending. Returns how many were pending."""
        return self._settle(keys, declined=False)

    def decline(self, keys: Iterable[TapKey]) -> int:
        """The issuer declined these: the acquirer's loss, recorded in its risk."""
        return self._settle(keys, declined=True)

    def forget(self, key: TapKey) -> bool:
        """Undo an approval that never became durable (its store write failed): no longer
        pending, its risk and its card's total in the window taken back, as if never decided.
        False if the key was not pending."""
        advice = self._pending.pop(key, None)
        if advice is None:
            return False
        if advice.time_ms // self.window_ms == self._window and advice.card_no in self._cards:
            total = self._cards[advice.card_no] - advice.amount_fen
            if total > 0:
                self._cards[advice.card_no] = total
            else:
                del self._cards[advice.card_no]  # frees its tracking slot too
        risk = self._risk[advice.issuer]
        risk.approved_count -= 1
        risk.approved_fen -= advice.amount_fen
        risk.pending_count -= 1
        risk.pending_fen -= advice.amount_fen
        return True

    def _settle(self, keys: Iterable[TapKey], declined: bool) -> int:
        n = 0
        for key in keys:
            advice = self._pending.pop(key, None)
            if advice is None:
                continue  # already settled: an ack may come twice
            n += 1
            risk = self._risk[advice.issuer]
            risk.pending_count -= 1
            risk.pending_fen -= advice.amount_fen
            if declined:
                risk.declined_count += 1
                risk.declined_fen += advice.amount_fen
        return n

    def risk(self, issuer: str) -> Risk:
        r = self._risk.get(issuer, Risk())
        return Risk(r.approved_count, r.approved_fen, r.pending_count, r.pending_fen, r.declined_count,
                    r.declined_fen)

    def card_total_fen(self, card_no: int, now_ms: int) -> int:
        """The card's stand-in total in the window of ``now_ms`` (0 in a window not yet seen)."""
        return self._cards.get(card_no, 0) if now_ms // self.window_ms == self._window else 0

    @property
    def pending_count(self) -> int:
        return len(self._pending)


__all__ = ["DEFAULT_MAX_CARDS", "DEFAULT_MAX_PENDING", "Advice", "Decision", "Risk", "StandIn", "StandInCode",
           "TapKey", "terminal_result"]
