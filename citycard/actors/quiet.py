"""When a shard is quiet enough for a snapshot: its journal rate now against its own recent
highest, and its host's CPU idle. A snapshot costs the shard and Postgres several microseconds a
changed card; at a peak that already used the machine it tipped the scale-1 day over
(BENCHMARKS.md, issue 17), so a due snapshot waits for a lull, up to a bound. The rate alone is
fooled by an overload: a shard whose gateway is swamped journals less, and looked quiet. Pure:
the caller passes the clock and a sampler of the host's CPU times."""

from collections import deque
from collections.abc import Callable

IDLE_HOST = 0.5  # a host at least this idle is quiet whatever the shard's rate: a steady load


class QuietWatch:
    """Rows journaled, in ``bucket_s`` buckets over the last ``memory_s``. Quiet: the newest
    full bucket's rate is at most ``fraction`` of the highest bucket remembered, and the host's
    CPU was at least ``cpu_idle_min`` idle since the sample before; or the host was at least
    IDLE_HOST idle (a steady load has no lull, and would otherwise wait for the row bound).
    ``cpu_times`` returns the host's cumulative (idle, total) CPU seconds; it is called when a
    bucket ends."""

    def __init__(self, fraction: float, *, cpu_idle_min: float = 0.0,
                 cpu_times: Callable[[], tuple[float, float]] | None = None,
                 bucket_s: float = 10.0, memory_s: float = 1800.0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], not {fraction}")
        if not 0.0 <= cpu_idle_min < 1.0:
            raise ValueError(f"cpu_idle_min must be in [0, 1), not {cpu_idle_min}")
        self.fraction = fraction
        self.cpu_idle_min = cpu_idle_min if cpu_times is not None else 0.0
        self._cpu_times = cpu_times
        self._cpu_prev = cpu_times() if cpu_times is not None else (0.0, 0.0)
        self.cpu_idle: float | None = None  # over the newest full bucket
        self.bucket_s = bucket_s
        self._buckets: deque[int] = deque(maxlen=max(1, int(memory_s / bucket_s)))  # full ones
        self._current = 0
        self._current_index: int | None = None

    def add(self, now_s: float, rows: int) -> None:
        self._roll(now_s)
        self._current += rows

    def quiet(self, now_s: float) -> bool:
        self._roll(now_s)
        if self.cpu_idle_min > 0.0:
            if self.cpu_idle is None or self.cpu_idle < self.cpu_idle_min:
                return False
            if self.cpu_idle >= max(IDLE_HOST, self.cpu_idle_min):
                return True
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
            if self._cpu_times is not None:
                idle_s, total_s = self._cpu_times()
                spent_s = total_s - self._cpu_prev[1]
                if spent_s > 0:
                    self.cpu_idle = (idle_s - self._cpu_prev[0]) / spent_s
                self._cpu_prev = (idle_s, total_s)
