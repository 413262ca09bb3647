"""Embedded Postgres and Redis: start, use, stop, restart on the same state dir, no leftovers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from citycard.errors import CityCardError
from citycard.persistence.embedded import (
    EmbeddedServiceError,
    start_embedded_postgres,
    start_embedded_redis,
)

pytestmark = pytest.mark.services


def _gone(pid: int, timeout: float = 5.0) -> bool:
    # Strict: not even a zombie may remain, so the server must have been reaped by us.
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _children(pid: int) -> list[int]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


async def _pg_write_and_read(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "citycard"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SHOW shared_buffers") == "256MB"
        assert (await conn.fetchval("SHOW max_wal_size"), await conn.fetchval("SHOW checkpoint_timeout")) == ("4GB", "15min")
        assert int(await conn.fetchval("SHOW max_connections")) >= 100
        await conn.execute("CREATE TABLE taps (id int PRIMARY KEY, card text NOT NULL)")
        await conn.executemany("INSERT INTO taps VALUES ($1, $2)", [(1, "A-1"), (2, "B-2")])
        return await _pg_rows(conn)
    finally:
        await conn.close()


async def _pg_read(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await _pg_rows(conn)
    finally:
        await conn.close()


async def _pg_rows(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    return [tuple(row) for row in await conn.fetch("SELECT id, card FROM taps ORDER BY id")]


async def _redis_roundtrip(url: str) -> tuple[bytes | None, bytes]:
    client = aioredis.from_url(url)
    try:
        await client.set("card:A-1", "42")
        value = await client.get("card:A-1")
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe("taps")
            # Wait for the confirmation so the publish cannot overtake the subscription.
            confirm = await pubsub.get_message(timeout=5)
            assert confirm is not None and confirm["type"] == "subscribe"
            assert await client.publish("taps", "tap:A-1") == 1
            message = None
            deadline = time.monotonic() + 5
            while message is None and time.monotonic() < deadline:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            assert message is not None, "published message never arrived"
            return value, message["data"]
        finally:
            await pubsub.aclose()
    finally:
        await client.aclose()


async def _redis_get(url: str, key: str) -> bytes | None:
    client = aioredis.from_url(url)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


def test_postgres_keeps_data_across_restarts(tmp_path: Path) -> None:
    first = start_embedded_postgres(tmp_path)
    try:
        assert first.name == "postgres"
        assert first.pid is not None and not _gone(first.pid, timeout=0)
        assert asyncio.run(_pg_write_and_read(first.url)) == [(1, "A-1"), (2, "B-2")]
        backends = _children(first.pid)
        assert backends, "a running postmaster has helper processes"
    finally:
        first.stop()
    first.stop()  # idempotent
    assert _gone(first.pid)
    assert all(_gone(pid) for pid in backends)
    assert (tmp_path / "postgres" / "server.log").exists()

    second = start_embedded_postgres(tmp_path)
    try:
        assert second.pid is not None and second.pid != first.pid
        assert asyncio.run(_pg_read(second.url)) == [(1, "A-1"), (2, "B-2")]
    finally:
        second.stop()
    assert _gone(second.pid)


def test_postgres_reuses_a_running_server_without_owning_it(tmp_path: Path) -> None:
    owner = start_embedded_postgres(tmp_path)
    try:
        reused = start_embedded_postgres(tmp_path)
        assert reused.pid is None
        assert reused.url == owner.url
        other_db = start_embedded_postgres(tmp_path, database="other db")  # quoting in URL and SQL
        assert other_db.pid is None
        reused.stop()
        other_db.stop()
        assert asyncio.run(_fetch_database(other_db.url)) == "other db"
        assert not _gone(owner.pid, timeout=0)
    finally:
        owner.stop()
    assert _gone(owner.pid)


async def _fetch_database(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()


def test_postgres_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    start_embedded_postgres(tmp_path).stop()
    with (tmp_path / "postgres" / "postgresql.conf").open("a") as conf:
        conf.write("no_such_setting = 1\n")
    with pytest.raises(EmbeddedServiceError, match="no_such_setting") as caught:
        start_embedded_postgres(tmp_path)
    assert isinstance(caught.value, CityCardError)
    assert "server.log" in str(caught.value)


def test_redis_roundtrip_stop_and_restart(tmp_path: Path) -> None:
    first = start_embedded_redis(tmp_path)
    try:
        assert first.name == "redis"
        assert first.pid is not None
        assert asyncio.run(_redis_roundtrip(first.url)) == (b"42", b"tap:A-1")
    finally:
        first.stop()
    first.stop()  # idempotent
    assert _gone(first.pid)
    assert not (tmp_path / "redis" / "redis.sock").exists()

    second = start_embedded_redis(tmp_path)
    try:
        assert second.pid is not None and second.pid != first.pid
        # Redis runs without persistence: it is a cache and bus, Postgres is the record.
        assert asyncio.run(_redis_get(second.url, "card:A-1")) is None
    finally:
        second.stop()
    assert _gone(second.pid)


def test_redis_reuses_a_running_server_without_owning_it(tmp_path: Path) -> None:
    owner = start_embedded_redis(tmp_path)
    try:
        reused = start_embedded_redis(tmp_path)
        assert reused.pid is None and reused.url == owner.url
        reused.stop()
        assert asyncio.run(_redis_roundtrip(reused.url)) == (b"42", b"tap:A-1")
    finally:
        owner.stop()
    assert _gone(owner.pid)


def test_redis_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    blocker = tmp_path / "redis" / "redis.sock"
    blocker.mkdir(parents=True)
    (blocker / "keep").touch()  # a non-empty dir where the socket should go: bind must fail
    with pytest.raises(EmbeddedServiceError, match="redis.log"):
        start_embedded_redis(tmp_path)


_CHILD = """
import asyncio, sys
import asyncpg
import redis.asyncio as aioredis

async def main(pg_url, redis_url):
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        answer = await conn.fetchval("SELECT count(*) FROM pg_stat_activity")
    finally:
        await conn.close()
    client = aioredis.from_url(redis_url)
    try:
        pong = await client.ping()
    finally:
        await client.aclose()
    print(answer > 0, pong)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_urls_work_from_another_process(tmp_path: Path) -> None:
    pg = start_embedded_postgres(tmp_path)
    rd = start_embedded_redis(tmp_path)
    try:
        # Misleading PG* variables in the worker must not matter: the URL carries host and port.
        env = {**os.environ, "PGHOST": "/nonexistent", "PGPORT": "1", "PGDATABASE": "nope"}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, pg.url, rd.url],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["True", "True"]
    finally:
        rd.stop()
        pg.stop()


def test_long_state_dir_falls_back_to_short_socket_paths(tmp_path: Path) -> None:
    state_dir = tmp_path / ("x" * 60) / ("y" * 60)  # socket paths here exceed the 107-byte limit
    pg = start_embedded_postgres(state_dir)
    rd = start_embedded_redis(state_dir)
    try:
        assert str(state_dir) not in pg.url and str(state_dir) not in rd.url
        assert asyncio.run(_fetch_database(pg.url)) == "citycard"
        assert asyncio.run(_redis_roundtrip(rd.url)) == (b"42", b"tap:A-1")
    finally:
        rd.stop()
        pg.stop()
    assert _gone(pg.pid) and _gone(rd.pid)
