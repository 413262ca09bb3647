"""Money and journal audit read back from Postgres."""

from dataclasses import asdict, dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Audit:
    cards: int
    opening_fen: int
    balances_fen: int  # current balances from Postgres: opening + every journal movement, all purses
    charged_fen: int  # paid by holders, net of money put in (top-ups and credits count negative)
    journal_rows: int
    duplicate_seqs: int  # (terminal, seq) pairs with more than one row: must be 0
    actor_mismatches: int | None  # cards whose in-memory balance differs from Postgres
    fund_fen: int = 0  # paid by the health-insurance fund (not the holders' money)
    epurse_mismatches: int = 0  # rows whose e-purse balance disagrees with the movements: must be 0

    @property
    def balanced(self) -> bool:
        return self.opening_fen == self.balances_fen + self.charged_fen

    @property
    def ok(self) -> bool:
        return (self.balanced and self.duplicate_seqs == 0 and not self.actor_mismatches
                and self.epurse_mismatches == 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "balanced": self.balanced, "ok": self.ok}


_OPENING = ("opening_fen + opening_general_fen + opening_voucher_fen + opening_allowance_fen"
            " + opening_medical_fen")
_DELTAS = "d_epurse + d_general + d_voucher + d_allowance + d_medical + d_deposit"


async def postgres_balances(conn: asyncpg.Connection) -> dict[int, int]:
    """Each card's money over all purses, from the record: opening plus every journal movement."""
    rows = await conn.fetch(
        f"WITH moved AS (SELECT card_no, sum({_DELTAS}) AS delta FROM journal GROUP BY card_no)"
        f" SELECT c.card_no, {_OPENING} + coalesce(m.delta, 0) FROM cards c LEFT JOIN moved m USING (card_no)"
    )
    return {r[0]: int(r[1]) for r in rows}


async def epurse_mismatches(conn: asyncpg.Connection) -> int:
    """Cards whose last journal row's e-purse balance disagrees with opening + e-purse movements."""
    return int(await conn.fetchval(
        "WITH last AS (SELECT DISTINCT ON (card_no) card_no, balance_after_fen FROM journal"
        "   WHERE balance_after_fen >= 0 ORDER BY card_no, lsn DESC),"
        " moved AS (SELECT card_no, sum(d_epurse) AS d FROM journal GROUP BY card_no)"
        " SELECT count(*) FROM cards c JOIN last l USING (card_no) LEFT JOIN moved m USING (card_no)"
        " WHERE c.opening_fen + coalesce(m.d, 0) <> l.balance_after_fen"
    ))


async def run_audit(conn: asyncpg.Connection, actor_balances: dict[int, int] | None = None) -> Audit:
    cards, opening = await conn.fetchrow(f"SELECT count(*), coalesce(sum({_OPENING}), 0) FROM cards")
    rows, charged, fund = await conn.fetchrow(
        "SELECT count(*), coalesce(sum(amount_fen), 0), coalesce(sum(fund_fen), 0) FROM journal")
    dups = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM journal WHERE terminal_id <> 0"  # 0: card services, keyed by op_key
        " GROUP BY terminal_id, seq HAVING count(*) > 1) d"
    )
    pg = await postgres_balances(conn)
    mismatches = None
    if actor_balances is not None:
        mismatches = sum(1 for card, bal in pg.items() if actor_balances.get(card) != bal)
        mismatches += sum(1 for card in actor_balances if card not in pg)
    return Audit(int(cards), int(opening), int(sum(pg.values())), int(charged), int(rows), int(dups), mismatches,
                 int(fund), await epurse_mismatches(conn))


# Answers that leave no row (protocol section 7.3): nothing was decided for them.
UNRECORDED_CODES = (5, 6)  # DUPLICATE_SEQ, SEQ_TOO_OLD


@dataclass(frozen=True)
class AnsweredCheck:
    """The taps a load run got final answers for, against the journal."""

    checked: int  # answered taps that must have a row
    missing_rows: int  # answered, no row: an answer that was not durable (must be 0)
    extra_rows: int  # answered taps with more than one row (must be 0)
    code_mismatches: int  # row's result differs from the answer (must be 0)
    fare_mismatches: int  # OK answers whose fare differs from the row's amount (must be 0)
    charged_fen: int  # sum of fares the terminals were told (OK answers)

    @property
    def ok(self) -> bool:
        return not (self.missing_rows or self.extra_rows or self.code_mismatches or self.fare_mismatches)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


async def check_answered(conn: asyncpg.Connection, columns: list[tuple[Any, Any, Any, Any]]) -> AnsweredCheck:
    """``columns``: per sender, (terminal ids, seqs, fares, codes) of its answered taps.
    Every answered tap must have exactly one journal row with the answer's code and fare."""
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS answered (terminal_id bigint, seq bigint,"
                       " fare_fen bigint, code smallint) ON COMMIT PRESERVE ROWS")
    await conn.execute("TRUNCATE answered")
    for terms, seqs, fares, codes in columns:
        await conn.copy_records_to_table("answered", records=zip(terms, seqs, fares, codes, strict=True),
                                         columns=("terminal_id", "seq", "fare_fen", "code"))
    await conn.execute("ANALYZE answered")
    row = await conn.fetchrow(
        "WITH a AS (SELECT * FROM answered WHERE code <> ALL($1::smallint[])),"
        " j AS (SELECT terminal_id, seq, count(*) AS n, min(result) AS result, min(amount_fen) AS amount"
        "       FROM journal WHERE (terminal_id, seq) IN (SELECT terminal_id, seq FROM a)"
        "       GROUP BY terminal_id, seq)"
        " SELECT count(*) AS checked,"
        "  count(*) FILTER (WHERE j.n IS NULL) AS missing,"
        "  count(*) FILTER (WHERE j.n > 1) AS extra,"
        "  count(*) FILTER (WHERE j.n IS NOT NULL AND j.result <> a.code) AS code_mismatch,"
        "  count(*) FILTER (WHERE j.n IS NOT NULL AND a.code = 0 AND j.amount <> a.fare_fen) AS fare_mismatch,"
        "  coalesce(sum(a.fare_fen) FILTER (WHERE a.code = 0), 0) AS charged"
        " FROM a LEFT JOIN j USING (terminal_id, seq)",
        list(UNRECORDED_CODES),
    )
    await conn.execute("DROP TABLE answered")
    return AnsweredCheck(int(row["checked"]), int(row["missing"]), int(row["extra"]),
                         int(row["code_mismatch"]), int(row["fare_mismatch"]), int(row["charged"]))
