"""A synthetic city: cards with opening balances and a category mix, and terminals."""

import random
from dataclasses import dataclass

import asyncpg

from ..domain.cards import CardStatus, Category, make_card_no
from ..domain.shard import shard_of
from ..domain.taps import TapKind

FIRST_TERMINAL_ID = 1001
# Category mix of cardholders (adult, student, elderly, disabled).
CATEGORY_WEIGHTS = ((Category.ADULT, 78), (Category.STUDENT, 10), (Category.ELDERLY, 10), (Category.DISABLED, 2))
# Terminal mix for the demo city: mostly bus validators.
TERMINAL_WEIGHTS = ((TapKind.BUS, 70), (TapKind.TAXI, 10), (TapKind.MERCHANT, 12), (TapKind.PETROL, 4),
                    (TapKind.WATER_BUS, 4))
N_BUS_ROUTES = 500


@dataclass(frozen=True)
class TerminalPlan:
    terminal_id: int
    kind: int
    route: int


def card_numbers(n_cards: int) -> list[int]:
    return [make_card_no(serial) for serial in range(1, n_cards + 1)]


def plan_cards(n_cards: int, n_shards: int, seed: int) -> list[tuple[int, int, int, int, int]]:
    """(card_no, shard_id, category, status, opening_fen): opening balances 5 to 200 yuan."""
    rng = random.Random(seed)
    cats = [c for c, _ in CATEGORY_WEIGHTS]
    weights = [w for _, w in CATEGORY_WEIGHTS]
    rows = []
    for card_no in card_numbers(n_cards):
        category = rng.choices(cats, weights)[0]
        rows.append((card_no, shard_of(card_no, n_shards), int(category), int(CardStatus.ACTIVE),
                     rng.randrange(500, 20_001)))
    return rows


def plan_terminals(n_terminals: int, seed: int) -> list[TerminalPlan]:
    rng = random.Random(seed + 1)
    kinds = [k for k, _ in TERMINAL_WEIGHTS]
    weights = [w for _, w in TERMINAL_WEIGHTS]
    out = []
    for i in range(n_terminals):
        kind = int(rng.choices(kinds, weights)[0])
        route = rng.randint(1, N_BUS_ROUTES) if kind == TapKind.BUS else (
            rng.randint(1, 2) if kind == TapKind.WATER_BUS else 0)
        out.append(TerminalPlan(FIRST_TERMINAL_ID + i, kind, route))
    return out


async def seed_city(
    conn: asyncpg.Connection, cards: list[tuple[int, int, int, int, int]], terminals: list[TerminalPlan]
) -> None:
    await conn.copy_records_to_table(
        "cards", records=cards, columns=("card_no", "shard_id", "category", "status", "opening_fen")
    )
    await conn.copy_records_to_table(
        "terminals",
        records=[(t.terminal_id, t.kind, True, f"{TapKind(t.kind).name.lower()}-{t.terminal_id}", t.route)
                 for t in terminals],
        columns=("terminal_id", "kind", "enabled", "name", "route"),
    )
