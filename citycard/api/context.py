"""What every endpoint needs: the database pool, Redis, the shard actors and the settings.

Every change to a card goes through its AccountShard (``run_ops``), never by direct SQL, so a
counter top-up and a tap on the same card are ordered by the one writer of that card.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from ..config.settings import Settings
from ..domain.ops import CardOp, OpOutcome
from ..domain.shard import shard_of
from ..persistence import hotlist

_outcomes_decoder = msgspec.msgpack.Decoder(list[OpOutcome])
_encoder = msgspec.msgpack.Encoder()
SHARD_CALL_TIMEOUT_S = 30.0


@dataclass
class ApiContext:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    shards: Sequence[Any]  # AccountShard actor handles, by shard id
    insurance_categories: frozenset[str] = frozenset()  # as the fare table names them
    now_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))

    @property
    def prefix(self) -> str:
        return self.settings.redis.prefix

    def shard_of(self, card_no: int) -> int:
        return shard_of(card_no, len(self.shards))

    async def run_ops(self, ops: Sequence[CardOp]) -> list[OpOutcome]:
        """Apply ops on their cards' shards (one call per shard); outcomes in the ops' order.
        Each op is durable in the journal when this returns."""
        groups: dict[int, list[int]] = {}
        for i, op in enumerate(ops):
            groups.setdefault(self.shard_of(op.card_no), []).append(i)
        out: list[OpOutcome | None] = [None] * len(ops)

        async def call(shard: int, idx: list[int]) -> None:
            payload = _encoder.encode([ops[i] for i in idx])
            async with asyncio.timeout(SHARD_CALL_TIMEOUT_S):  # wait_for can swallow a cancellation on 3.11
                packed = await self.shards[shard].apply_ops.remote(payload)
            for i, o in zip(idx, _outcomes_decoder.decode(packed), strict=True):
                out[i] = o

        await asyncio.gather(*(call(s, idx) for s, idx in groups.items()))
        return [o for o in out if o is not None]

    async def run_op(self, op: CardOp) -> OpOutcome:
        return (await self.run_ops([op]))[0]

    async def card_view(self, card_no: int) -> dict[str, Any] | None:
        views = await asyncio.wait_for(
            self.shards[self.shard_of(card_no)].card_views.remote([card_no]), SHARD_CALL_TIMEOUT_S)
        return views[0]  # type: ignore[no-any-return]

    async def add_cards(self, card_nos: list[int]) -> None:
        """Tell the owning shards about cards just written to the cards table."""
        groups: dict[int, list[int]] = {}
        for c in card_nos:
            groups.setdefault(self.shard_of(c), []).append(c)
        await asyncio.gather(*(asyncio.wait_for(self.shards[s].add_cards.remote(cs), SHARD_CALL_TIMEOUT_S)
                               for s, cs in groups.items()))

    async def hotlist_add(self, conn: asyncpg.Connection, card_no: int, reason: str) -> int:
        return await hotlist.add(conn, self.redis, self.prefix, card_no, reason)

    async def hotlist_remove(self, conn: asyncpg.Connection, card_no: int, reason: str) -> int:
        return await hotlist.remove(conn, self.redis, self.prefix, card_no, reason)
