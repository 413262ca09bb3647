"""The gateway's in-memory hotlist, kept current from Redis (pub/sub plus a version poll),
and the hotlist deltas it answers terminals with, from Postgres through a query the platform
passes in (the gateway imports no persistence)."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from ..domain.hotlist import Delta
from ..keys import hotlist_keys as keys
from ..protocols.messages import MAX_HOTLIST_ITEMS
from ..tasks import cancel_and_wait
from .metrics import Metrics

log = logging.getLogger(__name__)


class HotlistCache:
    """``cards`` is what the tap path checks. ``rebuild`` is called when Redis lost the list."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        rebuild: Callable[[], Awaitable[int]],
        poll_interval_s: float = 0.25,
        metrics: Metrics | None = None,
    ) -> None:
        self.cards: set[int] = set()
        self._metrics = metrics
        self.version = 0
        self._redis = redis
        self._set_key, self._version_key, self._channel = keys(prefix)
        self._rebuild = rebuild
        self._poll_interval_s = poll_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self.reloads = 0

    async def start(self) -> None:
        await self.reload()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._poll())]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    async def reload(self) -> None:
        raw_version = await self._redis.get(self._version_key)
        if raw_version is None:  # Redis restarted empty or was flushed: Postgres has the record
            await self._rebuild()
            raw_version = await self._redis.get(self._version_key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.smembers(self._set_key)
            pipe.get(self._version_key)
            members, raw_version = await pipe.execute()
        self.cards = {int(m) for m in members}
        self.version = int(raw_version or 0)
        self.reloads += 1
        self._report()
        self._synced()

    def _report(self) -> None:
        """citycard_hotlist_cards and citycard_hotlist_version: what this gateway holds now."""
        if self._metrics is not None:
            self._metrics.hotlist_size.set(len(self.cards))
            self._metrics.hotlist_version.set(self.version)

    def _synced(self) -> None:
        """citycard_hotlist_last_sync_timestamp_seconds: the copy was just found current."""
        if self._metrics is not None:
            self._metrics.hotlist_synced.set(time.time())

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._on_event(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away; the poll catches up
                log.warning("hotlist subscription lost: %r", exc)
                await asyncio.sleep(self._poll_interval_s)

    async def _on_event(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        head, _, version_text = text.partition(":")
        version = int(version_text or 0)
        if version <= self.version and head != "*":
            return  # already in the copy we hold
        if head == "*" or version > self.version + 1:
            await self.reload()  # a rebuild, or we missed an event
            return
        card_no = int(head[1:])
        if head[0] == "+":
            self.cards.add(card_no)
        else:
            self.cards.discard(card_no)
        self.version = max(self.version, version)
        self._report()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                raw = await self._redis.get(self._version_key)
                if raw is None or int(raw) != self.version:
                    await self.reload()
                else:
                    self._synced()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep serving from the copy we have
                log.warning("hotlist poll failed: %r", exc)


# A card number is at most 9 bytes of MessagePack; the rest of params_info fits in this.
_PARAMS_OVERHEAD_BYTES = 256
_CARD_MAX_BYTES = 9


def max_hotlist_items(max_frame_bytes: int) -> int:
    """Cards one params_info may carry so that it stays within the frame limit."""
    return max(1, min(MAX_HOTLIST_ITEMS, (max_frame_bytes - _PARAMS_OVERHEAD_BYTES) // _CARD_MAX_BYTES))


class HotlistDeltas:
    """Answers "what changed since version v" for terminals' parameter requests.

    Postgres's hotlist_log is the source (the cache above keeps no log). Bounded: at most
    ``max_items`` cards an answer, ``max_queries`` queries at once, each within ``timeout_s``.
    After a loss report every terminal asks the same question, so an answer is shared by all
    who ask for the same version until the gateway's version moves or ``memo_s`` passes.
    """

    def __init__(
        self,
        query: Callable[[int, int], Awaitable[Delta]],
        current_version: Callable[[], int],
        max_items: int,
        *,
        max_queries: int = 2,
        timeout_s: float = 2.0,
        memo_s: float = 1.0,
        memo_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._query = query  # (from_version, max_items) -> Delta, from Postgres
        self._current_version = current_version
        self.max_items = max_items
        self._queries = asyncio.Semaphore(max_queries)
        self._timeout_s = timeout_s
        self._memo_s = memo_s
        self._memo_entries = memo_entries
        self._clock = clock
        self._memo: dict[int, tuple[Delta, float]] = {}
        self._memo_version = -1
        self.queries = 0

    async def __call__(self, from_version: int) -> Delta:
        if from_version == self._current_version():
            return Delta(from_version)  # the common case: nothing new, no query
        hit = self._cached(from_version)
        if hit is not None:
            return hit
        async with self._queries:
            hit = self._cached(from_version)  # a query we waited behind may have answered it
            if hit is not None:
                return hit
            self.queries += 1
            async with asyncio.timeout(self._timeout_s):  # not wait_for: see AccountShardCore
                answer = await self._query(from_version, self.max_items)
        if len(self._memo) >= self._memo_entries:
            self._memo.clear()
        self._memo[from_version] = (answer, self._clock() + self._memo_s)
        return answer

    def _cached(self, from_version: int) -> Delta | None:
        version = self._current_version()
        if version != self._memo_version:
            self._memo.clear()
            self._memo_version = version
        hit = self._memo.get(from_version)
        if hit is None or hit[1] <= self._clock():
            return None
        return hit[0]
