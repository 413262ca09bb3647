"""The hotlist: Postgres is the record, Redis spreads it to every gateway.

Redis keys (under the deployment's prefix): ``{p}:hotlist`` a set of card numbers,
``{p}:hotlist:version`` the highest hotlist_log version mirrored, and the pub/sub channel
``{p}:hotlist:events`` carrying "+card_no:version" / "-card_no:version". Redis may lose all of
it at any time; ``rebuild_redis`` makes it again from Postgres.
"""

import asyncpg
import redis.asyncio as aioredis

from ..domain.cards import CardStatus


def keys(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}:hotlist", f"{prefix}:hotlist:version", f"{prefix}:hotlist:events"


async def add(
    conn: asyncpg.Connection, redis: aioredis.Redis, prefix: str, card_no: int, reason: str
) -> int:
    """List a card; returns the hotlist version. Durable in Postgres before Redis hears of it."""
    return await _change(conn, redis, prefix, card_no, reason, listed=True)


async def remove(
    conn: asyncpg.Connection, redis: aioredis.Redis, prefix: str, card_no: int, reason: str
) -> int:
    """Take a card off the hotlist; returns the hotlist version."""
    return await _change(conn, redis, prefix, card_no, reason, listed=False)


async def _change(
    conn: asyncpg.Connection, redis: aioredis.Redis, prefix: str, card_no: int, reason: str, listed: bool
) -> int:
    before, after = (CardStatus.ACTIVE, CardStatus.BLOCKED) if listed else (CardStatus.BLOCKED, CardStatus.ACTIVE)
    async with conn.transaction():
        version = await conn.fetchval(
            "INSERT INTO hotlist_log (card_no, listed, reason) VALUES ($1, $2, $3) RETURNING version",
            card_no, listed, reason,
        )
        if listed:
            await conn.execute(
                "INSERT INTO hotlist (card_no, reason, version) VALUES ($1, $2, $3)"
                " ON CONFLICT (card_no) DO UPDATE SET reason = $2, version = $3, listed_at = now()",
                card_no, reason, version,
            )
        else:
            await conn.execute("DELETE FROM hotlist WHERE card_no = $1", card_no)
        await conn.execute(  # a cancelled card stays cancelled
            "UPDATE cards SET status = $2 WHERE card_no = $1 AND status = $3", card_no, int(after), int(before)
        )
    await _mirror(redis, prefix, card_no, version, listed=listed)
    return int(version)


async def _mirror(redis: aioredis.Redis, prefix: str, card_no: int, version: int, listed: bool) -> None:
    set_key, version_key, channel = keys(prefix)
    async with redis.pipeline(transaction=True) as pipe:
        if listed:
            pipe.sadd(set_key, card_no)
        else:
            pipe.srem(set_key, card_no)
        pipe.set(version_key, version)
        pipe.publish(channel, f"{'+' if listed else '-'}{card_no}:{version}")
        await pipe.execute()


async def current_version(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM hotlist_log"))


async def rebuild_redis(conn: asyncpg.Connection, redis: aioredis.Redis, prefix: str) -> int:
    """Make Redis's copy from Postgres; returns the version mirrored.

    A listing committed while we copy could be overwritten by our older copy, so copy again
    until Postgres's version did not move during the copy (bounded).
    """
    for _ in range(5):
        version = await _copy_to_redis(conn, redis, prefix)
        if await current_version(conn) == version:
            break
    return version


async def _copy_to_redis(conn: asyncpg.Connection, redis: aioredis.Redis, prefix: str) -> int:
    set_key, version_key, channel = keys(prefix)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cards = [r[0] for r in await conn.fetch("SELECT card_no FROM hotlist")]
        version = await current_version(conn)
    tmp = f"{set_key}:rebuild"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(tmp)
        for i in range(0, len(cards), 10_000):
            pipe.sadd(tmp, *cards[i : i + 10_000])
        if cards:
            pipe.rename(tmp, set_key)
        else:
            pipe.delete(set_key)
        pipe.set(version_key, version)
        pipe.publish(channel, f"*:{version}")
        await pipe.execute()
    return version
