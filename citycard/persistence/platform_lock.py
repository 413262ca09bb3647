"""One running platform per database schema (and per state dir in embedded mode).

The lock is a Postgres session advisory lock keyed by the schema, held on a dedicated
connection whose ``application_name`` names the holder, so a second start (on any host) can
say who holds it. Embedded mode also takes an flock on ``<state dir>/platform.<schema>.lock``
holding the same description. A watch checks the lock connection every few seconds: a lost
connection is re-acquired within a bounded time, or the owner is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncpg

from ..errors import CityCardError

log = logging.getLogger(__name__)

LOCK_CLASS = 0x43434C4B  # "CCLK": the advisory lock's first key, citycard's platform locks
APP_NAME_MAX = 63  # Postgres truncates application_name to NAMEDATALEN - 1 bytes
CHECK_INTERVAL_S = 3.0
REACQUIRE_WINDOW_S = 15.0  # a Postgres restart may take this long; then the platform stops
CONNECT_TIMEOUT_S = 5.0
QUERY_TIMEOUT_S = 5.0


class PlatformLocked(CityCardError):
    """Another platform holds the schema; the message names it."""


def lock_key(schema: str) -> int:
    """The advisory lock's second key: a stable non-negative int4 of the schema name."""
    return int.from_bytes(hashlib.sha256(schema.encode()).digest()[:4], "big") & 0x7FFFFFFF


def describe_holder(command: str, *, pid: int | None = None, host: str | None = None,
                    since: dt.datetime | None = None) -> str:
    """`citycard up 4711@host since 20261207T115502Z`, cut to fit an application_name."""
    pid = os.getpid() if pid is None else pid
    stamp = (since or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    head, tail = f"citycard {command} {pid}@", f" since {stamp}"
    host = (host or socket.gethostname()).encode("ascii", "replace").decode()
    return head + host[: max(1, APP_NAME_MAX - len(head) - len(tail))] + tail


_HOLDER_SQL = """
SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database
  WHERE datname = current_database()) AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
  AND l.objsubid = 2
"""


@dataclass(frozen=True)
class Holder:
    description: str  # as describe_holder wrote it (or whatever the holder's session is named)
    backend_pid: int

    def line(self, schema: str) -> str:
        return (f"schema {schema!r} is in use by another platform: {self.description or '(unnamed session)'}"
                f" (Postgres backend {self.backend_pid}); stop it first")


async def _holder(conn: Any, schema: str) -> Holder | None:
    row = await conn.fetchrow(_HOLDER_SQL, LOCK_CLASS, lock_key(schema), timeout=QUERY_TIMEOUT_S)
    return None if row is None else Holder(row["application_name"] or "", row["pid"])


async def held_by(settings: Any, db_url: str) -> Holder | None:
    """Who holds the platform lock on ``settings.database.schema`` now, or None."""
    conn = await asyncpg.connect(db_url, timeout=CONNECT_TIMEOUT_S)
    try:
        return await _holder(conn, settings.database.schema)
    finally:
        await conn.close(timeout=QUERY_TIMEOUT_S)


async def _try_lock(db_url: str, schema: str, description: str) -> tuple[Any, Holder | None]:
    """(connection holding the lock, None), or (None, who holds it)."""
    conn = await asyncpg.connect(db_url, timeout=CONNECT_TIMEOUT_S,
                                 server_settings={"application_name": description})
    try:
        if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, lock_key(schema),
                               timeout=QUERY_TIMEOUT_S):
            return conn, None
        holder = await _holder(conn, schema) or Holder("(released while asked)", 0)
    except BaseException:
        await conn.close(timeout=QUERY_TIMEOUT_S)
        raise
    await conn.close(timeout=QUERY_TIMEOUT_S)
    return None, holder


async def _still_held(conn: Any, schema: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
        " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2",
        LOCK_CLASS, lock_key(schema), timeout=QUERY_TIMEOUT_S))


def _flock(path: Path, description: str) -> IO[str]:
    """The state dir's lock file, locked and holding ``description``; or PlatformLocked naming its holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "(unknown)"
        fh.close()
        raise PlatformLocked(f"{path} is locked by another platform: {holder}; stop it first") from None
    fh.seek(0)
    fh.truncate()
    fh.write(description + "\n")
    fh.flush()
    return fh


class PlatformLock:
    """A held platform lock; ``release`` gives it up. ``on_lost`` runs once if it cannot be kept."""

    def __init__(self, db_url: str, schema: str, description: str, conn: Any, file: IO[str] | None,
                 *, check_interval_s: float = CHECK_INTERVAL_S, reacquire_window_s: float = REACQUIRE_WINDOW_S,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.db_url, self.schema, self.description = db_url, schema, description
        self._conn, self._file = conn, file
        self.check_interval_s, self.reacquire_window_s = check_interval_s, reacquire_window_s
        self.on_lost = on_lost
        self.lost: str | None = None  # why, once the lock could not be kept
        self.reacquired = 0
        self._watch: asyncio.Task[None] | None = None

    def watch(self, on_lost: Callable[[str], None] | None = None) -> None:
        """Check the lock every ``check_interval_s``; re-acquire a lost one or call ``on_lost``."""
        if on_lost is not None:
            self.on_lost = on_lost
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop(), name="platform-lock-watch")

    async def _watch_loop(self) -> None:
        while self.lost is None:
            await asyncio.sleep(self.check_interval_s)
            try:
                if await _still_held(self._conn, self.schema):
                    continue
                why = "the lock was released on the server"
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                why = f"the lock's connection failed ({type(exc).__name__})"
            log.warning("platform lock on schema %r: %s; re-acquiring", self.schema, why)
            await self._close_conn()
            await self._reacquire(why)

    async def _reacquire(self, why: str) -> None:
        deadline = time.monotonic() + self.reacquire_window_s
        while time.monotonic() < deadline:
            try:
                conn, holder = await _try_lock(self.db_url, self.schema, self.description)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(min(1.0, self.check_interval_s))
                continue
            if conn is not None:
                self._conn, self.reacquired = conn, self.reacquired + 1
                log.warning("platform lock on schema %r re-acquired after: %s", self.schema, why)
                return
            self._fail(f"{why}, and another platform took it: {holder.line(self.schema) if holder else ''}")
            return
        self._fail(f"{why}, and it could not be re-acquired within {self.reacquire_window_s:g} s")

    def _fail(self, why: str) -> None:
        self.lost = f"lost the platform lock on schema {self.schema!r}: {why}"
        log.error("%s; stopping", self.lost)
        if self.on_lost is not None:
            self.on_lost(self.lost)

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), QUERY_TIMEOUT_S)
            conn.terminate()  # a no-op once closed

    async def release(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        await self._close_conn()  # the session ends, and with it the advisory lock
        if self._file is not None:
            self._file.close()
            self._file = None


async def take_platform_lock(settings: Any, db_url: str, command: str, *, state_file: bool) -> PlatformLock:
    """The one place a starting platform takes its lock (an extra gateway attached to a running
    platform must not). ``state_file``: also flock the state dir's lock file (embedded mode).
    Raises PlatformLocked naming the holder."""
    schema = settings.database.schema
    description = describe_holder(command)
    file = _flock(settings.state.path / f"platform.{schema}.lock", description) if state_file else None
    try:
        conn, holder = await _try_lock(db_url, schema, description)
    except BaseException:
        if file is not None:
            file.close()
        raise
    if conn is None:
        if file is not None:
            file.close()
        raise PlatformLocked(holder.line(schema) if holder else f"schema {schema!r} is locked")
    return PlatformLock(db_url, schema, description, conn, file)


__all__ = ["Holder", "PlatformLock", "PlatformLocked", "describe_holder", "held_by", "lock_key",
           "take_platform_lock"]
