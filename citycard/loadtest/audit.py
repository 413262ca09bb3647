"""Money and journal audit read back from Postgres."""

from dataclasses import asdict, dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Audit:
    cards: int
    opening_fen: int
    balances_fen: int  # current balances read from Postgres (latest journal row, else opening)
    charged_fen: int
    journal_rows: int
    duplicate_seqs: int  # (terminal, seq) pairs with more than one row: must be 0
    actor_mismatches: int | None  # cards whose in-memory balance differs from Postgres

    @property
    def balanced(self) -> bool:
        return self.opening_fen == self.balances_fen + self.charged_fen

    @property
    def ok(self) -> bool:
        return self.balanced and self.duplicate_seqs == 0 and not self.actor_mismatches

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "balanced": self.balanced, "ok": self.ok}


async def postgres_balances(conn: asyncpg.Connection) -> dict[int, int]:
    rows = await conn.fetch(
        "WITH last AS (SELECT DISTINCT ON (card_no) card_no, balance_after_fen FROM journal"
        " WHERE balance_after_fen >= 0 ORDER BY card_no, lsn DESC)"
        " SELECT c.card_no, coalesce(l.balance_after_fen, c.opening_fen) AS balance"
        " FROM cards c LEFT JOIN last l USING (card_no)"
    )
    return {r[0]: r[1] for r in rows}


async def run_audit(conn: asyncpg.Connection, actor_balances: dict[int, int] | None = None) -> Audit:
    cards, opening = await conn.fetchrow("SELECT count(*), coalesce(sum(opening_fen), 0) FROM cards")
    rows, charged = await conn.fetchrow("SELECT count(*), coalesce(sum(amount_fen), 0) FROM journal")
    dups = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM journal GROUP BY terminal_id, seq HAVING count(*) > 1) d"
    )
    pg = await postgres_balances(conn)
    mismatches = None
    if actor_balances is not None:
        mismatches = sum(1 for card, bal in pg.items() if actor_balances.get(card) != bal)
        mismatches += sum(1 for card in actor_balances if card not in pg)
    return Audit(int(cards), int(opening), int(sum(pg.values())), int(charged), int(rows), int(dups), mismatches)
