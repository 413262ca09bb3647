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


# -- offline (city-pass) records --------------------------------------------------------------
@dataclass(frozen=True)
class OfflineAudit:
    """The offline records a run made, against what the host journaled (docs/loadtest.md)."""

    cards: int  # offline cards of the run
    records_made: int  # honest records the generator made
    forged_made: int
    journaled: int  # this run's offline_records rows on the run's cards
    journaled_matching: int  # of them, a record the generator made, same amount and TAC
    missing: int  # made, not journaled (must be 0)
    extra: int  # journaled, not made by the generator (must be 0)
    keys_twice: int  # (card, counter) journaled more than once (must be 0)
    not_accepted_rows: int  # journaled with a code other than ACCEPTED (must be 0 in an honest run)
    shadow_mismatches: int  # cards whose shadow (loaded - spent) differs from opening - journaled
    chip_mismatches: int  # cards whose generator's chip balance differs from opening - journaled
    tacs_checked: int  # journaled records whose TAC the audit recomputed with the issuer's keys
    tacs_bad: int  # (must be 0)
    rejects: int  # this run's offline_rejects rows on the run's cards
    forged_rejected: int  # forged records found in offline_rejects as BAD_TAC
    unexpected_rejects: int  # rejects that are not one of the forged records (must be 0)
    forged_hotlisted: int  # forged cards on the hotlist

    @property
    def ok(self) -> bool:
        return (self.missing == 0 and self.extra == 0 and self.keys_twice == 0 and self.not_accepted_rows == 0
                and self.journaled == self.journaled_matching == self.records_made
                and self.shadow_mismatches == 0 and self.chip_mismatches == 0
                and self.tacs_checked == self.journaled and self.tacs_bad == 0
                and self.forged_rejected == self.forged_made == self.forged_hotlisted
                and self.unexpected_rejects == 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


async def check_offline(conn: asyncpg.Connection, records: list[Any], cards: list[Any],
                        openings: dict[int, int], tac_ok: Any) -> OfflineAudit:
    """``records``: columns (card, counter, amount, tac as int, forged) of every record made;
    ``cards``: columns (card, chip balance now, first counter of the run, records); ``openings``:
    card -> its on-card balance at the start; ``tac_ok(row) -> bool`` re-checks one journaled
    row's TAC with the issuer's keys. The run's records on a card are its counters from the
    run's first on."""
    rc, rn, ra, rt, rf = records
    cc, cb, cfirst, _ = cards
    await conn.execute("CREATE TEMP TABLE off_made (card_no bigint, counter int, amount bigint, tac bytea,"
                       " forged boolean) ON COMMIT PRESERVE ROWS")
    await conn.execute("CREATE TEMP TABLE off_cards (card_no bigint PRIMARY KEY, opening bigint, chip bigint,"
                       " first_counter int) ON COMMIT PRESERVE ROWS")
    try:
        await conn.copy_records_to_table(
            "off_made", columns=("card_no", "counter", "amount", "tac", "forged"),
            records=((c, n, a, t.to_bytes(4, "big"), bool(f)) for c, n, a, t, f in zip(rc, rn, ra, rt, rf, strict=True)))
        await conn.copy_records_to_table(
            "off_cards", columns=("card_no", "opening", "chip", "first_counter"),
            records=((c, openings[c], b, f) for c, b, f in zip(cc, cb, cfirst, strict=True)))
        await conn.execute("ANALYZE off_made; ANALYZE off_cards")
        run_rows = ("SELECT r.* FROM offline_records r JOIN off_cards k ON r.card_no = k.card_no"
                    " AND r.offline_counter >= k.first_counter")
        row = await conn.fetchrow(
            f"WITH j AS ({run_rows}), h AS (SELECT * FROM off_made WHERE NOT forged)"
            " SELECT (SELECT count(*) FROM j) AS journaled,"
            "  (SELECT count(*) FROM j JOIN h ON j.card_no = h.card_no AND j.offline_counter = h.counter"
            "     AND j.amount_fen = h.amount AND j.tac = h.tac) AS matching,"
            "  (SELECT count(*) FROM h WHERE NOT EXISTS (SELECT 1 FROM j WHERE j.card_no = h.card_no"
            "     AND j.offline_counter = h.counter)) AS missing,"
            "  (SELECT count(*) FROM j WHERE NOT EXISTS (SELECT 1 FROM h WHERE j.card_no = h.card_no"
            "     AND j.offline_counter = h.counter)) AS extra,"
            "  (SELECT count(*) FROM j WHERE code <> 0) AS not_accepted,"
            "  (SELECT count(*) FROM h) AS made")
        twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM offline_records r JOIN off_cards k USING (card_no)"
            " GROUP BY r.card_no, r.offline_counter HAVING count(*) > 1) d")
        balances = await conn.fetchrow(
            f"WITH j AS ({run_rows}), s AS (SELECT card_no, sum(amount_fen) AS spent FROM j GROUP BY card_no),"
            " b AS (SELECT k.card_no, k.opening - coalesce(s.spent, 0) AS by_records, k.chip,"
            "   o.loaded_fen - o.spent_fen AS shadow FROM off_cards k JOIN offline_cards o USING (card_no)"
            "   LEFT JOIN s USING (card_no))"
            " SELECT count(*) FILTER (WHERE shadow <> by_records) AS shadow_bad,"
            "  count(*) FILTER (WHERE chip <> by_records) AS chip_bad, count(*) AS n FROM b")
        rejects = await conn.fetchrow(
            "WITH x AS (SELECT x.* FROM offline_rejects x JOIN off_cards k ON x.card_no = k.card_no"
            "   AND x.offline_counter >= k.first_counter),"
            " f AS (SELECT * FROM off_made WHERE forged)"
            " SELECT (SELECT count(*) FROM x) AS rejects,"
            "  (SELECT count(*) FROM f WHERE EXISTS (SELECT 1 FROM x WHERE x.card_no = f.card_no"
            "     AND x.offline_counter = f.counter AND x.tac = f.tac AND x.code = 2)) AS forged_rejected,"
            "  (SELECT count(*) FROM x WHERE NOT EXISTS (SELECT 1 FROM f WHERE x.card_no = f.card_no"
            "     AND x.offline_counter = f.counter AND x.tac = f.tac AND x.code = 2)) AS unexpected,"
            "  (SELECT count(DISTINCT f.card_no) FROM f JOIN hotlist USING (card_no)) AS hotlisted,"
            "  (SELECT count(*) FROM f) AS forged")
        checked = bad = 0
        async with conn.transaction():
            async for r in conn.cursor(run_rows, prefetch=5000):
                checked += 1
                if not tac_ok(r):
                    bad += 1
    finally:
        await conn.execute("DROP TABLE IF EXISTS off_made; DROP TABLE IF EXISTS off_cards")
    return OfflineAudit(
        cards=int(balances["n"]), records_made=int(row["made"]), forged_made=int(rejects["forged"]),
        journaled=int(row["journaled"]), journaled_matching=int(row["matching"]), missing=int(row["missing"]),
        extra=int(row["extra"]), keys_twice=int(twice), not_accepted_rows=int(row["not_accepted"]),
        shadow_mismatches=int(balances["shadow_bad"]), chip_mismatches=int(balances["chip_bad"]),
        tacs_checked=checked, tacs_bad=bad, rejects=int(rejects["rejects"]),
        forged_rejected=int(rejects["forged_rejected"]), unexpected_rejects=int(rejects["unexpected"]),
        forged_hotlisted=int(rejects["hotlisted"]))


def offline_tac_checker(issuer: Any) -> Any:
    """``row -> bool``: an offline_records row's TAC recomputed with the issuer's keys (the
    reference ``domain.offline.tac_ok``, not the gateway's fast path)."""
    from ..domain.offline import OfflineRecord, tac_ok
    from ..protocols.offline import when_of
    from .offline_gen import DtkCache

    dtk = DtkCache(issuer)
    whens: dict[int, Any] = {}

    def check(r: Any) -> bool:
        when = whens.get(r["tx_when"])
        if when is None:
            if len(whens) > 100_000:
                whens.clear()
            when = whens[r["tx_when"]] = when_of(r["tx_when"])
        rec = OfflineRecord(r["card_no"], r["offline_counter"], r["amount_fen"], r["balance_after_fen"], r["tx_type"],
                            r["terminal_id"], r["terminal_seq"], when, bytes(r["tac"]), r["kind"], r["route"])
        return tac_ok(dtk(rec.card_no), rec)

    return check
