"""Before an offline run: the validators registered, the offline cards chosen and loaded.

Validators are terminals like any other (the gateway authenticates each against the
``terminals`` table), with ids of their own range (``offline_gen.VALIDATOR_FIRST_ID``), so
they never collide with the online terminals the lab picks. Each offline card gets
``LOAD_FEN`` onto its purse *as the host knows it*: ``offline_cards.loaded_fen`` is raised, as
a purse load at a counter before the day would have done (cards/purse_loads.py), and the
generator's chip starts from the host's shadow (loaded - spent) and its next offline counter.
Against a running platform, runs follow each other: batch seqs and SAM seqs continue after
what the host holds, and cards already hotlisted are left out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..domain.taps import TapKind
from ..errors import CityCardError
from .offline_gen import validator_ids

LOAD_FEN = 10_000  # each offline card's load before the run (100 yuan)


@dataclass(frozen=True)
class OfflinePlan:
    validators: list[tuple[int, int, int]]  # (terminal id, kind, route)
    cards: list[tuple[int, int, int]]  # (card, on-card balance at the start, next offline counter)
    last_batch_seq: dict[int, int]
    last_terminal_seq: dict[int, int]
    load_fen: int


async def prepare_offline(conn: Any, home_cards: Sequence[int], n_cards: int, n_terminals: int, seed: int,
                          load_fen: int = LOAD_FEN) -> OfflinePlan:
    if not home_cards:
        raise CityCardError("offline mode needs home cards")
    ids = validator_ids(n_terminals)
    validators = [(tid, int(TapKind.BUS), i % 10 + 1) for i, tid in enumerate(ids)]
    await conn.executemany(
        "INSERT INTO terminals (terminal_id, kind, enabled, name, route) VALUES ($1, $2, true, $3, $4)"
        " ON CONFLICT (terminal_id) DO NOTHING",
        [(tid, kind, f"offline-validator-{tid}", route) for tid, kind, route in validators])
    disabled = await conn.fetch("SELECT terminal_id FROM terminals WHERE terminal_id = ANY($1::integer[])"
                                " AND NOT enabled", ids)
    if disabled:
        raise CityCardError(f"offline validators disabled on the platform: {[r[0] for r in disabled][:10]}")
    rng = random.Random(seed * 1_000_003 + 5)
    picked = sorted(home_cards[i] for i in rng.sample(range(len(home_cards)), min(n_cards, len(home_cards))))
    listed = {r[0] for r in await conn.fetch("SELECT card_no FROM hotlist WHERE card_no = ANY($1::bigint[])",
                                             picked)}
    picked = [c for c in picked if c not in listed]
    if not picked:
        raise CityCardError("no offline card left that is not hotlisted")
    async with conn.transaction():  # rows locked in card order, as every writer of offline_cards does
        rows = await conn.fetch(
            "INSERT INTO offline_cards AS o (card_no, loaded_fen) SELECT c, $2 FROM unnest($1::bigint[]) AS c"
            " ORDER BY c ON CONFLICT (card_no) DO UPDATE SET loaded_fen = o.loaded_fen + EXCLUDED.loaded_fen,"
            " updated_at = now() RETURNING card_no, loaded_fen - spent_fen AS balance, last_counter",
            picked, load_fen)
    cards = sorted((int(r["card_no"]), int(r["balance"]), int(r["last_counter"]) + 1) for r in rows)
    batch = await conn.fetch("SELECT terminal_id, max(batch_seq) FROM offline_batches"
                             " WHERE terminal_id = ANY($1::bigint[]) GROUP BY 1", ids)
    seqs = await conn.fetch(
        "SELECT terminal_id, max(terminal_seq) FROM (SELECT terminal_id, terminal_seq FROM offline_records"
        " WHERE terminal_id = ANY($1::bigint[]) UNION ALL SELECT terminal_id, terminal_seq FROM offline_rejects"
        " WHERE terminal_id = ANY($1::bigint[])) s GROUP BY 1", ids)
    return OfflinePlan(validators, cards, {int(r[0]): int(r[1]) for r in batch},
                       {int(r[0]): int(r[1]) for r in seqs}, load_fen)
