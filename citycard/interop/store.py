"""What the link keeps in Postgres (migration 0009): acquirer slots on the issuer's side, the
remote-tap log and the stand-in taps on the acquirer's side. Each call commits before it
returns: the caller answers a terminal or a peer only after that."""

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


async def standin_state(pool: Any, terminal_id: int, seq: int) -> tuple[str, int | None] | None:
    row = await pool.fetchrow("SELECT state, code FROM standin_taps WHERE terminal_id = $1 AND seq = $2",
                              terminal_id, seq)
    return None if row is None else (row["state"], row["code"])


async def pending_advice(pool: Any, issuer: str, limit: int) -> list[LinkTap]:
    rows = await pool.fetch(
        "SELECT terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen FROM standin_taps"
        " WHERE issuer = $1 AND state = 'pending' ORDER BY approved_ms, terminal_id, seq LIMIT $2", issuer, limit)
    return [LinkTap(issuer, r["terminal_id"], r["seq"], r["card_no"], r["kind"], r["route"], r["tap_time_ms"],
                    r["amount_fen"]) for r in rows]


async def settle_standin(pool: Any, issuer: str, decisions: list[tuple[int, int, bool, int]], now_ms: int) -> None:
    """(terminal_id, seq, accepted, code) of ``issuer``'s ack, in one transaction; only that
    issuer's stand-in taps are settled by it."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "UPDATE standin_taps SET state = $3, code = $4, decided_ms = $5"
            " WHERE terminal_id = $1 AND seq = $2 AND state = 'pending' AND issuer = $6",
            [(tid, seq, "confirmed" if ok else "declined", code, now_ms, issuer) for tid, seq, ok, code in decisions])


__all__ = ["MAX_REMOTE_TERMINAL_ID", "REMOTE_TERMINAL_BASE", "LinkTap", "acquirer_slot", "log_remote_tap",
           "pending_advice", "record_standin", "remote_terminal_id", "settle_standin", "standin_state"]
