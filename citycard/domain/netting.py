"""Regional clearing's arithmetic, pure (issue 15; docs/interop.md when it comes).

A card of issuer A used in city B is an *obligation*: A (the issuer, which holds the money on
its card or account) owes B (the acquirer, whose operator carried the rider) the amount, less
the interchange fee that the issuer keeps. Per settlement window the clearing house nets them:

- **bilateral**: for each pair, what one owes the other after both directions cancel;
- **multilateral**: one position per participant, positive = it receives, negative = it pays.
  Every fen one participant pays, another receives, so the positions sum to exactly 0.

All amounts are integer fen; the fee is rounded down per obligation, so the issuer's and the
acquirer's books agree to the fen on what was deducted.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BASIS_POINTS = 10_000


@dataclass(frozen=True, slots=True)
class Obligation:
    """What ``issuer`` owes ``acquirer`` for ``count`` uses of its cards, gross."""

    issuer: str
    acquirer: str
    amount_fen: int
    count: int = 1

    def __post_init__(self) -> None:
        if not self.issuer or not self.acquirer:
            raise ValueError("issuer and acquirer must be named")
        if self.issuer == self.acquirer:
            raise ValueError(f"{self.issuer} cannot owe itself: a home use is settled inside the city")
        if isinstance(self.amount_fen, bool) or not isinstance(self.amount_fen, int) or self.amount_fen < 0:
            raise ValueError(f"amount_fen must be a whole number of fen >= 0, got {self.amount_fen!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count!r}")


def interchange_fen(amount_fen: int, rate_bp: int) -> int:
    """The issuer's fee on ``amount_fen`` at ``rate_bp`` basis points, rounded down to the fen."""
    if not 0 <= rate_bp <= BASIS_POINTS:
        raise ValueError(f"interchange rate must be 0..{BASIS_POINTS} basis points, got {rate_bp}")
    return amount_fen * rate_bp // BASIS_POINTS


def net_of_fees(obligations: Iterable[Obligation], rate_bp: int) -> list[Obligation]:
    """Each obligation less the interchange fee the issuer keeps."""
    return [Obligation(o.issuer, o.acquirer, o.amount_fen - interchange_fen(o.amount_fen, rate_bp), o.count)
            for o in obligations]


def bilateral(obligations: Iterable[Obligation]) -> dict[tuple[str, str], int]:
    """For each pair with anything left after netting: (payer, payee) -> fen, payer < payee
    or not, whichever way the money goes; a pair that cancels exactly is absent."""
    owed: dict[tuple[str, str], int] = defaultdict(int)
    for o in obligations:
        a, b = sorted((o.issuer, o.acquirer))
        owed[(a, b)] += o.amount_fen if o.issuer == a else -o.amount_fen  # > 0: a pays b
    out: dict[tuple[str, str], int] = {}
    for (a, b), fen in owed.items():
        if fen > 0:
            out[(a, b)] = fen
        elif fen < 0:
            out[(b, a)] = -fen
    return out


def multilateral(obligations: Iterable[Obligation], participants: Iterable[str] = ()) -> dict[str, int]:
    """Each participant's one net position: positive receives, negative pays. Named
    ``participants`` with nothing to settle appear with 0. The values sum to exactly 0."""
    position: dict[str, int] = {p: 0 for p in participants}
    for o in obligations:
        position[o.issuer] = position.get(o.issuer, 0) - o.amount_fen
        position[o.acquirer] = position.get(o.acquirer, 0) + o.amount_fen
    return position


def over_cap(positions: Mapping[str, int], net_debit_cap_fen: Mapping[str, int]) -> set[str]:
    """Participants whose net debit (what they pay) exceeds their cap: their cards are refused
    stand-in elsewhere until they settle. A participant without a cap has none."""
    return {p for p, fen in positions.items() if p in net_debit_cap_fen and -fen > net_debit_cap_fen[p]}
