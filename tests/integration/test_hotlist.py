"""The hotlist on real Postgres and Redis (configured and embedded): Postgres is the record,
Redis a copy that can be rebuilt, and the gateway's cache follows both within a second."""

import asyncio
import time
from collections.abc import Awaitable

import asyncpg
import pytest
import redis.asyncio as aioredis

from citycard.domain.cards import CardStatus, make_card_no
from citycard.gateway.hotlist import HotlistCache
from citycard.gateway.metrics import Metrics
from citycard.persistence import hotlist
from citycard.persistence.db import connect
from citycard.persistence.migrate import migrate
from tests.support.services import ServiceUrls
from tests.support.waiting import within

pytestmark = pytest.mark.services

SHARDS = 2
CARDS = [make_card_no(s) for s in range(1, 11)]


async def _setup(urls: ServiceUrls, schema: str) -> tuple[asyncpg.Connection, aioredis.Redis]:
    conn = await connect(urls.db_url, schema)
    await migrate(conn, schema, SHARDS)
    await conn.executemany(
        "INSERT INTO cards (card_no, shard_id, status, opening_fen) VALUES ($1, 0, $2, 1000)",
        [(c, int(CardStatus.CANCELLED) if i == 9 else int(CardStatus.ACTIVE)) for i, c in enumerate(CARDS)],
    )
    return conn, aioredis.from_url(urls.redis_url)


async def _status(conn: asyncpg.Connection, card_no: int) -> int:
    return int(await conn.fetchval("SELECT status FROM cards WHERE card_no = $1", card_no))


async def _members(r: aioredis.Redis, prefix: str) -> set[int]:
    return {int(m) for m in await r.smembers(hotlist.keys(prefix)[0])}


async def _redis_version(r: aioredis.Redis, prefix: str) -> int | None:
    raw = await r.get(hotlist.keys(prefix)[1])
    return None if raw is None else int(raw)


def test_add_remove_and_rebuild(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        conn, r = await _setup(services, schema)
        set_key, version_key, _ = hotlist.keys(schema)
        try:
            assert await hotlist.current_version(conn) == 0
            a, b, cancelled = CARDS[0], CARDS[1], CARDS[9]

            v1 = await hotlist.add(conn, r, schema, a, "reported lost")
            assert v1 >= 1
            assert await r.sismember(set_key, str(a)) and await _members(r, schema) == {a}
            assert await _redis_version(r, schema) == v1 == await hotlist.current_version(conn)
            assert await _status(conn, a) == CardStatus.BLOCKED
            row = await conn.fetchrow("SELECT reason, version FROM hotlist WHERE card_no = $1", a)
            assert tuple(row) == ("reported lost", v1)

            v2 = await hotlist.add(conn, r, schema, b, "stolen")
            v3 = await hotlist.add(conn, r, schema, cancelled, "stolen")
            assert v1 < v2 < v3
            assert await _members(r, schema) == {a, b, cancelled}
            assert await _status(conn, cancelled) == CardStatus.CANCELLED  # never made active/blocked
            assert await _status(conn, CARDS[2]) == CardStatus.ACTIVE  # others untouched

            v4 = await hotlist.remove(conn, r, schema, a, "found")
            assert v4 > v3
            assert not await r.sismember(set_key, str(a))
            assert await _members(r, schema) == {b, cancelled}
            assert await _redis_version(r, schema) == v4 == await hotlist.current_version(conn)
            assert await _status(conn, a) == CardStatus.ACTIVE
            assert await conn.fetchval("SELECT count(*) FROM hotlist WHERE card_no = $1", a) == 0
            log = [tuple(x) for x in await conn.fetch("SELECT version, card_no, listed, reason FROM hotlist_log ORDER BY 1")]
            assert log == [(v1, a, True, "reported lost"), (v2, b, True, "stolen"),
                           (v3, cancelled, True, "stolen"), (v4, a, False, "found")]

            # Redis loses everything (and had a stray member): rebuilt from Postgres.
            await r.sadd(set_key, CARDS[5])
            await r.delete(version_key)
            assert await hotlist.rebuild_redis(conn, r, schema) == v4
            assert await _members(r, schema) == {b, cancelled}
            assert await _redis_version(r, schema) == v4
            await r.delete(set_key, version_key)
            assert await _members(r, schema) == set()
            assert await hotlist.rebuild_redis(conn, r, schema) == v4
            assert await _members(r, schema) == {b, cancelled}
            assert await _redis_version(r, schema) == v4

            # An empty hotlist rebuilds to an empty set with the current version.
            await hotlist.remove(conn, r, schema, b, "found")
            v6 = await hotlist.remove(conn, r, schema, cancelled, "found")
            await r.sadd(set_key, CARDS[6])
            assert await hotlist.rebuild_redis(conn, r, schema) == v6
            assert await _members(r, schema) == set() and await r.exists(set_key) == 0
            assert await _redis_version(r, schema) == v6
        finally:
            await r.aclose()
            await conn.close()

    asyncio.run(run())


def test_cache_follows_changes_and_survives_an_empty_redis(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        admin, admin_redis = await _setup(services, schema)
        gw_conn = await connect(services.db_url, schema)
        gw_redis = aioredis.from_url(services.redis_url)
        set_key, version_key, _ = hotlist.keys(schema)
        rebuilds = 0

        def rebuild() -> Awaitable[int]:
            nonlocal rebuilds
            rebuilds += 1
            return hotlist.rebuild_redis(gw_conn, gw_redis, schema)

        metrics = Metrics()

        def gauges() -> tuple[float | None, float | None]:
            get = metrics.registry.get_sample_value
            return get("citycard_hotlist_cards"), get("citycard_hotlist_version")

        cache = HotlistCache(gw_redis, schema, rebuild, metrics=metrics)
        try:
            listed = {CARDS[0], CARDS[1]}
            for c in sorted(listed):
                await hotlist.add(admin, admin_redis, schema, c, "lost")
            await cache.start()
            assert cache.cards == listed
            assert cache.version == await hotlist.current_version(admin)
            assert gauges() == (2, cache.version)
            assert rebuilds == 0
            await asyncio.sleep(0.1)  # let the subscription settle

            # An add from another connection reaches the cache within a second.
            started = time.perf_counter()
            v = await hotlist.add(admin, admin_redis, schema, CARDS[2], "stolen")
            await within(lambda: CARDS[2] in cache.cards, 2.0)
            elapsed = time.perf_counter() - started
            assert elapsed < 1.0, f"hotlist add took {elapsed:.3f} s to reach the cache"
            listed.add(CARDS[2])
            assert cache.cards == listed
            await within(lambda: cache.version == v, 1.0)
            assert gauges() == (3, v)

            started = time.perf_counter()
            await hotlist.remove(admin, admin_redis, schema, CARDS[0], "found")
            await within(lambda: CARDS[0] not in cache.cards, 2.0)
            assert time.perf_counter() - started < 1.0
            listed.discard(CARDS[0])
            assert cache.cards == listed
            assert gauges() == (2, cache.version)

            # Redis restarts empty: the cache rebuilds it from Postgres and keeps every card.
            reloads = cache.reloads
            await admin_redis.delete(set_key, version_key)
            await within(lambda: cache.reloads > reloads, 2.0)
            assert rebuilds >= 1
            assert cache.cards == listed
            assert await _members(admin_redis, schema) == listed
            current = await hotlist.current_version(admin)
            assert cache.version == current == await _redis_version(admin_redis, schema)
            assert gauges() == (2, current)

            # And it still follows changes after the rebuild.
            started = time.perf_counter()
            await hotlist.add(admin, admin_redis, schema, CARDS[3], "lost")
            await within(lambda: CARDS[3] in cache.cards, 2.0)
            assert time.perf_counter() - started < 1.0
            assert cache.cards == listed | {CARDS[3]}
        finally:
            await cache.stop()
            await gw_redis.aclose()
            await admin_redis.aclose()
            await gw_conn.close()
            await admin.close()

    asyncio.run(run())


def test_cache_catches_up_on_a_change_it_did_not_hear(services: ServiceUrls, schema: str) -> None:
    """A listing mirrored to Redis without its pub/sub event is picked up by the version poll."""

    async def run() -> None:
        admin, r = await _setup(services, schema)
        gw_redis = aioredis.from_url(services.redis_url)
        gw_conn = await connect(services.db_url, schema)
        set_key, version_key, _ = hotlist.keys(schema)
        cache = HotlistCache(gw_redis, schema, lambda: hotlist.rebuild_redis(gw_conn, gw_redis, schema))
        try:
            await cache.start()
            assert cache.cards == set() and cache.version == 0
            # Simulate a lost event: the record and the Redis copy change, nothing is published.
            await admin.execute("INSERT INTO hotlist_log (card_no, listed, reason) VALUES ($1, true, 'x')", CARDS[4])
            await admin.execute("INSERT INTO hotlist (card_no, reason, version) VALUES ($1, 'x', 1)", CARDS[4])
            await r.sadd(set_key, CARDS[4])
            await r.set(version_key, 1)
            waited = await within(lambda: CARDS[4] in cache.cards, 2.0)
            assert waited < 1.0
            assert cache.version == 1
        finally:
            await cache.stop()
            await gw_redis.aclose()
            await r.aclose()
            await gw_conn.close()
            await admin.close()

    asyncio.run(run())


# -- terminal deltas -------------------------------------------------------------------------
async def _follow(conn: asyncpg.Connection, held: tuple[set[int], int], max_items: int,
                  max_answers: int = 1000) -> tuple[set[int], int, int]:
    """A terminal asking until it is current, as docs/protocol.md 11.1 says: (cards, version, answers)."""
    cards, version = set(held[0]), held[1]
    for answers in range(1, max_answers + 1):
        d = await hotlist.delta(conn, version, max_items)
        assert len(d.added) + len(d.removed) <= max_items
        if d.reset:
            cards.clear()
        cards |= set(d.added)
        cards -= set(d.removed)
        version = d.to_version
        if not d.more:
            return cards, version, answers
    pytest.fail("the terminal never caught up")


async def _listed(conn: asyncpg.Connection) -> set[int]:
    return {r[0] for r in await conn.fetch("SELECT card_no FROM hotlist")}


def test_delta_from_any_version(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        conn, r = await _setup(services, schema)
        try:
            assert await hotlist.delta(conn, 0, 10) == hotlist.Delta(0)  # nothing listed, nothing held
            a, b, c, d = CARDS[:4]
            v1 = await hotlist.add(conn, r, schema, a, "lost")
            v2 = await hotlist.add(conn, r, schema, b, "lost")
            v3 = await hotlist.remove(conn, r, schema, a, "found")
            v4 = await hotlist.add(conn, r, schema, c, "lost")
            assert await hotlist.delta(conn, v4, 10) == hotlist.Delta(v4)
            # a little behind: the net change (a listed and found again is only removed)
            assert await hotlist.delta(conn, v1, 10) == hotlist.Delta(v4, [b, c], [a])
            assert await hotlist.delta(conn, v3, 10) == hotlist.Delta(v4, [c], [])
            # holding nothing, or a version the record never had: the whole list, reset
            assert await hotlist.delta(conn, 0, 10) == hotlist.Delta(v4, [b, c], reset=True)
            assert await hotlist.delta(conn, v4 + 100, 10) == hotlist.Delta(v4, [b, c], reset=True)
            # further behind than one answer holds, the list fits: the whole list
            assert await hotlist.delta(conn, v1, 2) == hotlist.Delta(v4, [b, c], reset=True)
            # neither fits: the log in pages, each to the version of its last change
            v5 = await hotlist.add(conn, r, schema, d, "lost")
            assert await hotlist.delta(conn, v1, 1) == hotlist.Delta(v2, [b], [], more=True)
            assert await hotlist.delta(conn, v2, 1) == hotlist.Delta(v3, [], [a], more=True)
            assert await hotlist.delta(conn, 0, 1) == hotlist.Delta(v1, [a], reset=True, more=True)
            assert await hotlist.delta(conn, v4, 1) == hotlist.Delta(v5, [d], [])
            # whatever a terminal holds (the list at its version, or junk under a foreign
            # version), following the answers brings it to the record's list
            held_at = {0: set(), v1: {a}, v2: {a, b}, v3: {b}, v4: {b, c}, v5 + 7: {CARDS[9], a}}
            for start, held in held_at.items():
                for max_items in (1, 2, 3, 100):
                    cards, version, _ = await _follow(conn, (held, start), max_items)
                    assert (cards, version) == ({b, c, d}, v5), (start, max_items)
            with pytest.raises(ValueError):
                await hotlist.delta(conn, 0, 0)
        finally:
            await r.aclose()
            await conn.close()

    asyncio.run(run())


def test_a_change_onto_an_emptied_redis_rebuilds_the_whole_copy(services: ServiceUrls, schema: str) -> None:
    """Redis restarted empty and a loss report came before any gateway noticed: Redis must not
    end up holding that one card as if it were the whole list."""

    async def run() -> None:
        conn, r = await _setup(services, schema)
        try:
            for c in CARDS[:3]:
                await hotlist.add(conn, r, schema, c, "lost")
            keys_now = [k async for k in r.scan_iter(match=f"{schema}:*")]
            await r.delete(*keys_now)  # only this test's keys: the Redis is shared
            v = await hotlist.add(conn, r, schema, CARDS[3], "lost")
            assert await _members(r, schema) == set(CARDS[:4])
            assert await _redis_version(r, schema) == v
            await r.delete(*hotlist.keys(schema)[:2])
            v = await hotlist.remove(conn, r, schema, CARDS[0], "found")
            assert await _members(r, schema) == set(CARDS[1:4])
            assert await _redis_version(r, schema) == v
        finally:
            await r.aclose()
            await conn.close()

    asyncio.run(run())


def test_a_terminal_following_concurrent_changes_misses_none(configured_services: ServiceUrls,
                                                             schema: str) -> None:
    """Writers on several connections list and unlist cards at once while a terminal follows
    the deltas: versions commit in order, so it ends with exactly the record's list."""

    async def run() -> None:
        conn, r = await _setup(configured_services, schema)
        writers = [await connect(configured_services.db_url, schema) for _ in range(4)]
        reader = await connect(configured_services.db_url, schema)
        try:
            async def write(w: asyncpg.Connection, seed: int) -> None:
                import random

                rng = random.Random(seed)
                for _ in range(40):
                    card = rng.choice(CARDS[:8])
                    change = hotlist.add if rng.random() < 0.6 else hotlist.remove
                    await change(w, r, schema, card, "x")

            held: tuple[set[int], int] = (set(), 0)
            tasks = [asyncio.create_task(write(w, i)) for i, w in enumerate(writers)]
            while not all(t.done() for t in tasks):
                cards, version, _ = await _follow(reader, held, 3)
                held = (cards, version)
                await asyncio.sleep(0.001)
            await asyncio.gather(*tasks)
            cards, version, _ = await _follow(reader, held, 3)
            assert version == await hotlist.current_version(conn)
            assert cards == await _listed(conn)
        finally:
            for w in writers:
                await w.close()
            await reader.close()
            await r.aclose()
            await conn.close()

    asyncio.run(run())
