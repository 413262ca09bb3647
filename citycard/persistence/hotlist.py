"""The hotlist: Postgres is the record, Redis spreads it to every gateway.

Redis keys (under the deployment's prefix): ``{p}:hotlist`` a set of card numbers,
``{p}:hotlist:version`` the highest hotlist_log version mirrored, and the pub/sub channel
``{p}:hotlist:events`` carrying "+card_no:version" / "-card_no:version". Redis may lose all of
it at any time; ``rebuild_redis`` makes it again from Postgres.

Terminals hold a copy too and catch up by version: ``delta`` answers what changed since the
version a terminal holds, bounded in size.
"""


import asyncpg
import redis.asyncio as aioredis

from ..domain.cards import CardStatus
from ..domain.hotlist import Delta, net_changes
from ..keys import hotlist_keys

keys = hotlist_keys  # the names are shared with the gateway's cache: citycard/keys.py


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
        # Versions commit in their order, so a reader that saw version v has seen every
        # version below it: a terminal's delta never skips a change that committed late.
        await conn.execute("LOCK TABLE hotlist_log IN EXCLUSIVE MODE")
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
    if not await _mirror(redis, prefix, card_no, version, listed=listed):
        await rebuild_redis(conn, redis, prefix)
    return int(version)


# One change, atomically, onto a copy that exists. Without the version key Redis lost its copy
# (restart, flush): a lone SADD would make a one-card list that gateways would then trust, so
# the caller rebuilds the whole copy instead. The version never goes back (mirrors may race).
_MIRROR_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if ARGV[1] == '+' then redis.call('SADD', KEYS[1], ARGV[2]) else redis.call('SREM', KEYS[1], ARGV[2]) end
if tonumber(redis.call('GET', KEYS[2])) < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3]) end
redis.call('PUBLISH', KEYS[3], ARGV[1] .. ARGV[2] .. ':' .. ARGV[3])
return 1
"""


async def _mirror(redis: aioredis.Redis, prefix: str, card_no: int, version: int, listed: bool) -> bool:
    """Mirror one change; False when Redis holds no copy to change."""
    set_key, version_key, channel = keys(prefix)
    done = await redis.eval(
        _MIRROR_LUA, 3, set_key, version_key, channel, "+" if listed else "-", card_no, version)
    return bool(done)


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


# -- terminal deltas (Delta and net_changes are pure: domain/hotlist.py) -------------------
async def delta(conn: asyncpg.Connection, from_version: int, max_items: int) -> Delta:
    """The change from the hotlist at ``from_version`` to now, at most ``max_items`` cards.

    - Up to date: nothing.
    - Behind by at most ``max_items`` changes: their net effect.
    - Further behind, holding nothing (0), or ahead of the record (a foreign or reset
      history): the whole list with ``reset`` if it fits; else the log in pages of
      ``max_items`` changes with ``more`` (from 0 with ``reset`` when the held version is
      unusable), each page bringing the terminal to the version of its last change.
    """
    if max_items < 1:
        raise ValueError("max_items must be at least 1")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        current = await current_version(conn)
        if from_version == current:
            return Delta(current)
        usable = 0 < from_version < current
        if usable:
            page = await _log_after(conn, from_version, max_items + 1)
            if len(page) <= max_items:
                return Delta(current, *net_changes((c, listed) for _, c, listed in page))
        listed = [r[0] for r in await conn.fetch(
            "SELECT card_no FROM hotlist ORDER BY card_no LIMIT $1", max_items + 1)]
        if len(listed) <= max_items:
            return Delta(current, listed, reset=True)
        start = from_version if usable else 0
        page = page[:max_items] if usable else await _log_after(conn, 0, max_items)
        added, removed = net_changes((c, listed) for _, c, listed in page)
        to_version = page[-1][0]  # a page of max_items >= 1 rows: the list is longer than that
        return Delta(to_version, added, [] if start == 0 else removed, reset=start == 0,
                     more=to_version < current)


async def _log_after(conn: asyncpg.Connection, version: int, limit: int) -> list[tuple[int, int, bool]]:
    rows = await conn.fetch(
        "SELECT version, card_no, listed FROM hotlist_log WHERE version > $1 ORDER BY version LIMIT $2",
        version, limit)
    return [(r[0], r[1], r[2]) for r in rows]


async def pool_delta(pool: asyncpg.Pool, from_version: int, max_items: int) -> Delta:
    """``delta`` on a connection of ``pool``: the query the gateway's HotlistDeltas is given."""
    async with pool.acquire() as conn:
        return await delta(conn, from_version, max_items)
