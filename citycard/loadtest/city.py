"""A synthetic city: cards with opening balances and a category mix, and terminals."""

import random
import time
from dataclasses import dataclass

import asyncpg

from ..domain.cards import DEFAULT_APPS, App, CardStatus, Category, make_card_no
from ..domain.shard import shard_of
from ..domain.taps import TapKind

FIRST_TERMINAL_ID = 1001
# Category mix of cardholders (adult, student, elderly, disabled).
CATEGORY_WEIGHTS = ((Category.ADULT, 78), (Category.STUDENT, 10), (Category.ELDERLY, 10), (Category.DISABLED, 2))
# Terminal mix for the demo city: mostly bus validators. Bike docks and parking lots send both
# taps of a pair (rent/return, entry/exit); their kind here is the first of the pair.
TERMINAL_WEIGHTS = ((TapKind.BUS, 60), (TapKind.TAXI, 8), (TapKind.MERCHANT, 10), (TapKind.PETROL, 3),
                    (TapKind.WATER_BUS, 3), (TapKind.BIKE_RENT, 6), (TapKind.PARKING_ENTRY, 3),
                    (TapKind.PARK_ENTRY, 3), (TapKind.LIBRARY, 2), (TapKind.MEDICAL, 2))
MERCHANT_IDS = (9001, 9002, 9003)
N_BUS_ROUTES = 500


@dataclass(frozen=True)
class TerminalPlan:
    terminal_id: int
    kind: int
    route: int


def card_numbers(n_cards: int) -> list[int]:
    return [make_card_no(serial) for serial in range(1, n_cards + 1)]


CARD_SEED_COLUMNS = (
    "card_no", "shard_id", "category", "status", "opening_fen", "opening_general_fen", "opening_voucher_fen",
    "opening_allowance_fen", "opening_medical_fen", "apps", "credit_good", "insurance", "medical_from_purse",
    "monthly_pass_from", "monthly_pass_until", "park_pass_from", "park_pass_until", "voucher_until_ms",
    "voucher_categories", "allowance_until_ms",
)
DAY_MS = 86_400_000
INSURANCE = ("employee", "retired", "resident")


def plan_cards(n_cards: int, n_shards: int, seed: int, now_ms: int | None = None) -> list[tuple]:
    """Rows for the cards table (CARD_SEED_COLUMNS): e-purse 5 to 200 yuan, and a share of
    monthly passes, park passes, allowances, vouchers, library and health-insurance holders."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    cats = [c for c, _ in CATEGORY_WEIGHTS]
    weights = [w for _, w in CATEGORY_WEIGHTS]
    rows = []
    for card_no in card_numbers(n_cards):
        category = rng.choices(cats, weights)[0]
        apps = int(DEFAULT_APPS)
        if rng.random() < 0.3:
            apps |= App.LIBRARY
        if rng.random() < 0.3:
            apps |= App.MERCHANT_MEMBER
        insured = rng.random() < 0.4
        if insured:
            apps |= App.MEDICAL
        monthly = rng.random() < 0.2
        park = rng.random() < 0.05
        allowance = rng.randrange(0, 20_001) if rng.random() < 0.1 else 0
        voucher = rng.randrange(0, 10_001) if rng.random() < 0.1 else 0
        rows.append((
            card_no, shard_of(card_no, n_shards), int(category), int(CardStatus.ACTIVE),
            rng.randrange(500, 20_001), rng.randrange(0, 50_001) if rng.random() < 0.5 else 0, voucher,
            allowance, rng.randrange(0, 100_001) if insured else 0, apps, rng.random() < 0.9,
            rng.choice(INSURANCE) if insured else "", insured and rng.random() < 0.5,
            now_ms - DAY_MS if monthly else None, now_ms + 29 * DAY_MS if monthly else None,
            now_ms - DAY_MS if park else None, now_ms + 364 * DAY_MS if park else None,
            now_ms + 30 * DAY_MS if voucher else 0, ["retail", "books"] if voucher else [],
            now_ms + 30 * DAY_MS if allowance else 0,
        ))
    return rows


def plan_terminals(n_terminals: int, seed: int) -> list[TerminalPlan]:
    rng = random.Random(seed + 1)
    kinds = [k for k, _ in TERMINAL_WEIGHTS]
    weights = [w for _, w in TERMINAL_WEIGHTS]
    out = []
    for i in range(n_terminals):
        kind = int(rng.choices(kinds, weights)[0])
        route = {
            TapKind.BUS: lambda: rng.randint(1, N_BUS_ROUTES), TapKind.WATER_BUS: lambda: rng.randint(1, 2),
            TapKind.MERCHANT: lambda: rng.choice(MERCHANT_IDS), TapKind.PARK_ENTRY: lambda: rng.randint(1, 3),
            TapKind.PARKING_ENTRY: lambda: rng.randint(1, 9), TapKind.BIKE_RENT: lambda: rng.randint(1, 500),
        }.get(kind, lambda: 0)()
        out.append(TerminalPlan(FIRST_TERMINAL_ID + i, kind, route))
    return out


async def seed_city(conn: asyncpg.Connection, cards: list[tuple], terminals: list[TerminalPlan]) -> None:
    await conn.copy_records_to_table("cards", records=cards, columns=CARD_SEED_COLUMNS)
    await conn.copy_records_to_table(
        "terminals",
        records=[(t.terminal_id, t.kind, True, f"{TapKind(t.kind).name.lower()}-{t.terminal_id}", t.route)
                 for t in terminals],
        columns=("terminal_id", "kind", "enabled", "name", "route"),
    )
