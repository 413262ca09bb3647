"""What every endpoint needs: the settings, the database pool, Redis and the shard client;
``services`` is what the card-services layer is given.

Every change to a card goes through its AccountShard (the ShardClient), never by direct SQL, so
a counter top-up and a tap on the same card are ordered by the one writer of that card.
``run_ops``, ``run_op`` and ``card_view`` are for tools and tests that drive the shards
directly.
"""

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import asyncpg
import redis.asyncio as aioredis

from ..actors.shard_client import ShardClient
from ..cards.pin_kdf import KdfGate
from ..cards.services import Services
from ..cards.throttle import Scope, Throttle
from ..config.settings import Settings
from ..domain.ops import CardOp, OpOutcome
from ..domain.views import CardView
from ..gateway.metrics import Metrics

# Half the cores for PIN checks (each ~0.1 s of CPU), the rest for the loop and the gateway.
KDF_WORKERS = max(1, (os.cpu_count() or 2) // 2)
KDF_CAPACITY = 64  # PIN checks in progress or waiting; beyond that 503, no try counted (per source: settings)


@dataclass
class ApiContext:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    shards: ShardClient
    insurance_categories: frozenset[str] = frozenset()  # as the fare table names them
    metrics: Metrics | None = None  # the platform's Prometheus metrics (None: tools and tests that need none)
    now_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))

    @property
    def prefix(self) -> str:
        return self.settings.redis.prefix

    @cached_property
    def services(self) -> Services:
        """What the card-services layer is given."""
        api = self.settings.api
        throttle = Throttle(self.redis, self.prefix, {Scope.LOGIN_SOURCE: api.login_failures_per_source,
                                                      Scope.LOGIN_CARD: api.login_failures_per_card,
                                                      Scope.PIN_TOKEN: api.pin_failures_per_token})
        return Services(self.shards, self.pool, self.redis, self.prefix, self.insurance_categories,
                        api.epurse_max_fen, api.pin_max_tries, api.pin_kdf_n,
                        KdfGate(KDF_WORKERS, KDF_CAPACITY, api.kdf_in_flight_per_source), throttle,
                        api.self_session_ttl_s)

    async def run_ops(self, ops: Sequence[CardOp], *, with_views: bool = True) -> list[OpOutcome]:
        """Apply ops on their cards' shards (one call per shard); outcomes in the ops' order.
        Each op is durable in the journal when this returns."""
        return await self.shards.apply_ops(ops, with_views=with_views)

    async def run_op(self, op: CardOp) -> OpOutcome:
        return await self.shards.apply_op(op)

    async def card_view(self, card_no: int) -> CardView | None:
        return await self.shards.card_view(card_no)
