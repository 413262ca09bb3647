"""A card's history from the journal: its shard's partition, newest first, paged by lsn."""

import asyncpg

from .migrate import journal_partition

_PURSE_COLUMNS = "d_epurse, d_general, d_voucher, d_allowance, d_medical, d_deposit"


async def card_rows(pool: asyncpg.Pool, shard_id: int, card_no: int, limit: int,
                    before_lsn: int | None) -> list[asyncpg.Record]:
    """Rows of ``card_no`` with lsn below ``before_lsn`` (all when None), at most ``limit``."""
    return list(await pool.fetch(
        f"SELECT lsn, kind, result, applied_ms, terminal_id, amount_fen, balance_after_fen, {_PURSE_COLUMNS}"
        f" FROM {journal_partition(shard_id)} WHERE card_no = $1 AND lsn < $2 ORDER BY lsn DESC LIMIT $3",
        card_no, before_lsn or 2**62, limit))
