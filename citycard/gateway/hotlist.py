"""The gateway's in-memory hotlist, kept current from Redis (pub/sub plus a version poll)."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from ..persistence.hotlist import keys
from ..tasks import cancel_and_wait

log = logging.getLogger(__name__)


class HotlistCache:
    """``cards`` is what the tap path checks. ``rebuild`` is called when Redis lost the list."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        rebuild: Callable[[], Awaitable[int]],
        poll_interval_s: float = 0.25,
    ) -> None:
        self.cards: set[int] = set()
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

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                raw = await self._redis.get(self._version_key)
                if raw is None or int(raw) != self.version:
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep serving from the copy we have
                log.warning("hotlist poll failed: %r", exc)
