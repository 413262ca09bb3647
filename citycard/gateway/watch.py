"""The platform's watch: every few seconds, off the tap path, it asks Postgres, Redis and each
AccountShard whether they answer, and the state directory's filesystem how full it is, and
sets the gauges and counters operators alert on (docs/operations.md). Every check is bounded
by ``timeout_s``; a check that fails or times out reads as down, never as an exception."""

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..tasks import cancel_and_wait, log_failure
from .metrics import WatchMetrics

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[Any]]


@dataclass
class _Seen:
    """What the last answer of one shard said, to turn its process counts into counters."""

    pid: int
    loads: int
    cpu_s: float


class PlatformWatch:
    """``probes[i]`` asks shard i for its ``probe()`` dict (actors/account_shard.py)."""

    def __init__(self, metrics: WatchMetrics, *, probes: Sequence[Check], check_postgres: Check,
                 check_redis: Check, state_dir: Path, interval_s: float = 5.0, timeout_s: float = 2.0) -> None:
        self.m = metrics
        self.probes = list(probes)
        self.check_postgres = check_postgres
        self.check_redis = check_redis
        self.state_dir = state_dir
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.polls = 0
        self._seen: dict[int, _Seen] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(log_failure(log, "platform watch"))

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval_s)

    async def poll_once(self) -> None:
        answers = await asyncio.gather(self._ask(self.check_postgres), self._ask(self.check_redis),
                                       *[self._ask(p) for p in self.probes])
        self.m.postgres_up.set(0 if isinstance(answers[0], BaseException) else 1)
        self.m.redis_up.set(0 if isinstance(answers[1], BaseException) else 1)
        for shard_id, answer in enumerate(answers[2:]):
            self._shard(shard_id, answer)
        self._disk()
        self.polls += 1

    async def _ask(self, check: Check) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await check()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure is the answer: down
            return exc

    def _shard(self, shard_id: int, answer: Any) -> None:
        label = str(shard_id)
        if isinstance(answer, BaseException) or not isinstance(answer, dict):
            self.m.shard_up.labels(label).set(0)
            self.m.shard_ready.labels(label).set(0)
            return
        self.m.shard_up.labels(label).set(1)
        self.m.shard_ready.labels(label).set(1 if answer["ready"] else 0)
        self.m.shard_rss.labels(label).set(answer["rss_bytes"])
        self.m.shard_mismatches.labels(label).set(answer["mismatches"])
        now = _Seen(int(answer["pid"]), int(answer["loads"]), float(answer["cpu_s"]))
        before = self._seen.get(shard_id)
        if before is None:  # first sight: its first load is no reload; CPU so far counts
            self.m.shard_restarts.labels(label)  # shown at 0 from the start, for increase()
            reloads, cpu_s = max(0, now.loads - 1), now.cpu_s
        elif before.pid != now.pid:  # a new process: every load it made is a reload
            self.m.shard_restarts.labels(label).inc()
            reloads, cpu_s = now.loads, now.cpu_s
        else:
            reloads, cpu_s = now.loads - before.loads, now.cpu_s - before.cpu_s
        if reloads > 0:
            self.m.shard_reloads.labels(label).inc(reloads)
        self.m.shard_cpu.labels(label).inc(max(0.0, cpu_s))
        self._seen[shard_id] = now

    def _disk(self) -> None:
        path = self.state_dir
        while not path.exists() and path != path.parent:  # not made yet: its filesystem is the parent's
            path = path.parent
        try:
            usage = shutil.disk_usage(path)
        except OSError as exc:
            log.warning("state directory %s: %r", self.state_dir, exc)
            return
        self.m.state_free.set(usage.free)
        self.m.state_size.set(usage.total)


__all__ = ["PlatformWatch"]
