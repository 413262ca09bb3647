"""Which shard owns a card or a terminal. Documented in docs/protocol.md; never change it
on a live database (the shard count is recorded at migration time)."""

_GOLDEN_64 = 0x9E3779B97F4A7C15
_MASK_64 = (1 << 64) - 1


def shard_of(card_no: int, n_shards: int) -> int:
    """Fibonacci hashing: spreads sequential card numbers evenly over the shards."""
    return (((card_no * _GOLDEN_64) & _MASK_64) >> 32) % n_shards


def session_shard_of(terminal_id: int, n_shards: int) -> int:
    return terminal_id % n_shards
