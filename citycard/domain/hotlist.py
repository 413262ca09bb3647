"""Hotlist deltas as a terminal applies them: pure, so the gateway, the terminal client and
the simulation share them without Postgres."""

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Delta:
    """What a terminal holding ``from_version`` applies to reach ``to_version``: clear its list
    first if ``reset``, then add ``added`` and remove ``removed``. ``more``: still behind, ask
    again from ``to_version``."""

    to_version: int
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    reset: bool = False
    more: bool = False


def net_changes(rows: Iterable[tuple[int, bool]]) -> tuple[list[int], list[int]]:
    """(added, removed), sorted, from (card_no, listed) changes in version order: a card's last
    change wins, so a card listed and found again within the range is only removed."""
    last: dict[int, bool] = {}
    for card_no, listed in rows:
        last[card_no] = listed
    added = sorted(c for c, listed in last.items() if listed)
    removed = sorted(c for c, listed in last.items() if not listed)
    return added, removed
