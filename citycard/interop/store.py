"""What the link keeps in Postgres (migrations 0009, 0011): acquirer slots on the issuer's side,
the remote-tap log and the stand-in taps (approvals and voids) on the acquirer's side. Each
call commits before it returns: the caller answers a terminal or a peer only after that."""

from dataclasses import dataclass
from typing import Any

from ..domain.taps import MAX_TERMINAL_ID

# Issuer side: remote taps are decided on the shards under a reserved terminal id, so the
# shards' (terminal_id, seq) dedupe is the link's (acquirer, terminal_id, seq) key.
REMOTE_TERMINAL_BASE = 1 << 30  # local terminals stay below 2^30
REMOTE_SLOT_BITS = 20  # acquirer terminals 1 .. 2^20 - 1
MAX_REMOTE_TERMINAL_ID = (1 << REMOTE_SLOT_BITS) - 1
MAX_SLOTS = 1 << (30 - REMOTE_SLOT_BITS)  # 1024 acquirers, the registry's 1000 fit
assert REMOTE_TERMINAL_BASE + MAX_SLOTS * (1 << REMOTE_SLOT_BITS) - 1 <= MAX_TERMINAL_ID


def remote_terminal_id(slot: int, terminal_id: int) -> int:
    """The shard-side terminal id of an acquirer's terminal; ValueError outside the space."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"slot must be 0..{MAX_SLOTS - 1}, got {slot}")
    if not 1 <= terminal_id <= MAX_REMOTE_TERMINAL_ID:
        raise ValueError(f"remote terminal_id must be 1..{MAX_REMOTE_TERMINAL_ID}, got {terminal_id}")
    return REMOTE_TERMINAL_BASE + (slot << REMOTE_SLOT_BITS) + terminal_id


async def acquirer_slot(pool: Any, code: str, now_ms: int) -> int:
    """The acquirer's slot, allocated once and for good (the lowest free one)."""
    async with pool.acquire() as conn:
        for _ in range(5):  # two first connections at once: the unique slot refuses one; retry
            slot = await conn.fetchval("SELECT slot FROM interop_acquirers WHERE code = $1", code)
            if slot is not None:
                return int(slot)
            try:
                await conn.execute(
                    "INSERT INTO interop_acquirers (code, slot, first_ms) SELECT $1, coalesce(max(slot) + 1, 0), $2"
                    " FROM interop_acquirers ON CONFLICT DO NOTHING", code, now_ms)
            except Exception as exc:  # noqa: BLE001 - asyncpg UniqueViolationError on slot: retry
                if "unique" not in str(exc).lower():
                    raise
        raise RuntimeError(f"could not allocate a link slot for {code}")


@dataclass(frozen=True, slots=True)
class LinkTap:
    """A visitor's tap as the acquirer carries it."""

    issuer: str
    terminal_id: int
    seq: int
    card_no: int
    kind: int
    route: int
    time_ms: int
    amount_fen: int
    bill_class: int = 0
    refused_code: int | None = None  # a void (docs/interop.md 5.5): the Result the terminal heard
    attempts: int = 0  # advice answered undecided so far
    approved_ms: int = 0  # when the row was written


@dataclass(frozen=True, slots=True)
class Prior:
    """What the acquirer already holds for a key: a retry is answered from it, never sent again."""

    table: str  # "remote" (the issuer answered online) or "standin" (an approval or a void)
    result: int  # remote: the issuer's code; standin: the issuer's code once decided, else -1
    fare_fen: int
    balance_fen: int
    state: str = ""  # standin: pending, confirmed, declined, voided, reversed, expired
    refused_code: int | None = None  # standin: a void's refusal; None for an approval


async def prior(pool: Any, terminal_id: int, seq: int) -> Prior | None:
    """The key's first outcome here, if it has one (one indexed probe per table, one round trip)."""
    row = await pool.fetchrow(
        "SELECT 'remote' AS tbl, result, fare_fen, balance_fen, '' AS state, NULL::integer AS refused_code"
        " FROM remote_taps WHERE terminal_id = $1 AND seq = $2"
        " UNION ALL SELECT 'standin', coalesce(code, -1), amount_fen, -1, state, refused_code FROM standin_taps"
        " WHERE terminal_id = $1 AND seq = $2 LIMIT 1", terminal_id, seq)
    if row is None:
        return None
    return Prior(row["tbl"], row["result"], row["fare_fen"], row["balance_fen"], row["state"], row["refused_code"])


async def log_remote_tap(pool: Any, t: LinkTap, result: int, fare_fen: int, balance_fen: int, replay: bool,
                         now_ms: int) -> None:
    """The issuer's answer, durable on the acquirer's side too (a retry keeps the first row)."""
    await pool.execute(
        "INSERT INTO remote_taps (issuer, terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen, result,"
        " fare_fen, balance_fen, replay, answered_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
        " ON CONFLICT (terminal_id, seq) DO NOTHING",
        t.issuer, t.terminal_id, t.seq, t.card_no, t.kind, t.route, t.time_ms, t.amount_fen, result, fare_fen,
        balance_fen, replay, now_ms)


async def record_standin(pool: Any, t: LinkTap, now_ms: int) -> None:
    await pool.execute(
        "INSERT INTO standin_taps (issuer, terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen,"
        " approved_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (terminal_id, seq) DO NOTHING",
        t.issuer, t.terminal_id, t.seq, t.card_no, t.kind, t.route, t.time_ms, t.amount_fen, now_ms)


async def record_void(pool: Any, t: LinkTap, refused_code: int, now_ms: int) -> bool:
    """A tap sent to its issuer, unanswered, then refused here: advice owed (the issuer must hold
    the key refused and credit back a charge). False if the key already had a row."""
    done = await pool.execute(
        "INSERT INTO standin_taps (issuer, terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen,"
        " approved_ms, refused_code) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (terminal_id, seq) DO NOTHING",
        t.issuer, t.terminal_id, t.seq, t.card_no, t.kind, t.route, t.time_ms, t.amount_fen, now_ms, refused_code)
    return not isinstance(done, str) or done.endswith(" 1")


async def standin_state(pool: Any, terminal_id: int, seq: int) -> tuple[str, int | None] | None:
    row = await pool.fetchrow("SELECT state, code FROM standin_taps WHERE terminal_id = $1 AND seq = $2",
                              terminal_id, seq)
    return None if row is None else (row["state"], row["code"])


async def pending_advice(pool: Any, issuer: str, limit: int, now_ms: int | None = None) -> list[LinkTap]:
    """Rows owed to ``issuer``, oldest first; with ``now_ms``, only those due (next_try_ms)."""
    rows = await pool.fetch(
        "SELECT terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen, refused_code, attempts, approved_ms"
        " FROM standin_taps WHERE issuer = $1 AND state = 'pending' AND next_try_ms <= $3"
        " ORDER BY approved_ms, terminal_id, seq LIMIT $2", issuer, limit, 2**62 if now_ms is None else now_ms)
    return [LinkTap(issuer, r["terminal_id"], r["seq"], r["card_no"], r["kind"], r["route"], r["tap_time_ms"],
                    r["amount_fen"], 0, r["refused_code"], r["attempts"], r["approved_ms"]) for r in rows]


async def next_advice_ms(pool: Any, issuer: str) -> int | None:
    """When the soonest row owed to ``issuer`` is due (None: nothing owed)."""
    at = await pool.fetchval("SELECT min(next_try_ms) FROM standin_taps WHERE issuer = $1 AND state = 'pending'",
                             issuer)
    return None if at is None else int(at)


@dataclass(frozen=True, slots=True)
class Settled:
    """One row's end: its state, the issuer's code, and for people why (expiry)."""

    terminal_id: int
    seq: int
    state: str  # confirmed, declined, voided, reversed, expired
    code: int
    reason: str | None = None


async def settle_standin(pool: Any, issuer: str, settled: list[Settled], retry: list[tuple[int, int, int]],
                         now_ms: int) -> None:
    """``issuer``'s ack in one transaction: the rows it decided (or that expired) end; those it
    left undecided, (terminal_id, seq, next_try_ms), count an attempt and wait. Only that
    issuer's pending rows change."""
    async with pool.acquire() as conn, conn.transaction():
        if settled:
            await conn.executemany(
                "UPDATE standin_taps SET state = $3, code = $4, decided_ms = $5, reason = $7"
                " WHERE terminal_id = $1 AND seq = $2 AND state = 'pending' AND issuer = $6",
                [(s.terminal_id, s.seq, s.state, s.code, now_ms, issuer, s.reason) for s in settled])
        if retry:
            await conn.executemany(
                "UPDATE standin_taps SET attempts = attempts + 1, next_try_ms = $3"
                " WHERE terminal_id = $1 AND seq = $2 AND state = 'pending' AND issuer = $4",
                [(tid, seq, next_ms, issuer) for tid, seq, next_ms in retry])


__all__ = ["MAX_REMOTE_TERMINAL_ID", "REMOTE_TERMINAL_BASE", "LinkTap", "Prior", "Settled", "acquirer_slot",
           "log_remote_tap", "next_advice_ms", "pending_advice", "prior", "record_standin", "record_void",
           "remote_terminal_id", "settle_standin", "standin_state"]
