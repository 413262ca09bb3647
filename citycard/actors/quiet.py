"""When a shard is quiet enough for a snapshot: its journal rate now against its own recent
highest. A snapshot costs the shard and Postgres several microseconds a changed card; at a peak
that already uses the machine, it tipped the scale-1 day over (BENCHMARKS.md, issue 17), so a
due snapshot waits for a lull, up to a bound. Pure: the caller passes the clock."""

from collections import deque


class QuietWatch:
    """Rows journaled, in ``bucket_s`` buckets over the last ``memory_s``. Quiet: the newest
    full bucket's rate is at most ``fraction`` of the highest bucket remembered."""

    def __init__(self, fraction: float, *, bucket_s: float = 10.0, memory_s: float = 1800.0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], not {fraction}")
        self.fraction = fraction
        self.bucket_s = bucket_s
        self._buckets: deque[int] = deque(maxlen=max(1, int(memory_s / bucket_s)))  # full ones
        self._current = 0
        self._current_index: int | None = None

    def add(self, now_s: float, rows: int) -> None:
        self._roll(now_s)
        self._current += rows

    def quiet(self, now_s: float) -> bool:
        self._roll(now_s)
        if self.fraction >= 1.0 or not self._buckets:
            return True
        return self._buckets[-1] <= self.fraction * max(self._buckets)

    def _roll(self, now_s: float) -> None:
        index = int(now_s // self.bucket_s)
        if self._current_index is None:
            self._current_index = index
        elif index > self._current_index:
            self._buckets.append(self._current)
            # buckets with no rows in them, bounded by the deque's length
            for _ in range(min(index - self._current_index - 1, self._buckets.maxlen or 0)):
                self._buckets.append(0)
            self._current, self._current_index = 0, index
