"""What every card service needs, built once by the API from the platform's parts."""

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from ..actors.shard_client import ShardClient
from ..domain.views import CardView
from ..persistence import card_rows
from .lookup import card
from .pin_kdf import KdfGate
from .throttle import Throttle


@dataclass(frozen=True)
class Services:
    shards: ShardClient
    pool: asyncpg.Pool
    redis: aioredis.Redis
    redis_prefix: str
    insurance_categories: frozenset[str]  # as the fare table names them
    epurse_max_fen: int
    pin_max_tries: int
    pin_kdf_n: int  # scrypt cost of new PIN hashes
    kdf_gate: KdfGate  # one per app, made inside its event loop
    throttle: Throttle  # failures allowed per source, card and token
    self_session_ttl_s: int


@dataclass(frozen=True)
class CardInfo:
    """A card as its shard holds it, and whose it is."""

    view: CardView
    holder_id: int | None


async def card_info(svc: Services, card_no: int) -> CardInfo:
    view = await card(svc.shards, card_no)
    return CardInfo(view, await card_rows.holder_of(svc.pool, card_no))
