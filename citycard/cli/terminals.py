"""``citycard terminal register|disable|enable|show``: an operator's switch for one terminal.

A disable is committed in Postgres first, so it holds even if Redis is away; Redis only
makes the running gateways close the terminal's open connections at once.
"""

import asyncio
import os
import sys
from pathlib import Path

import redis.asyncio as aioredis

from ..config.settings import Settings
from ..errors import CityCardError
from ..persistence import terminals
from ..protocols.auth import terminal_key
from .services import Services, cli_operator, connect_app, migrate_db, resolve_services

REDIS_TIMEOUT_S = 3.0  # connect and publish; an unreachable Redis must not hang the operator


async def _publish(redis_url: str, prefix: str, terminal_id: int) -> int:
    redis = aioredis.from_url(redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            return await terminals.publish_disabled(redis, prefix, terminal_id)
    finally:
        await redis.aclose()


async def _switch(settings: Settings, services: Services, terminal_id: int, enabled: bool, reason: str) -> int:
    await migrate_db(settings, services.db_url)
    conn = await connect_app(settings, services)
    try:
        before = await terminals.set_enabled(conn, terminal_id, enabled, operator=cli_operator(), reason=reason)
    finally:
        await conn.close()
    if before is None:
        raise CityCardError(f"terminal {terminal_id} is not registered")
    state = "enabled" if enabled else "disabled"
    print(f"terminal {terminal_id}: {state}" if before != enabled else f"terminal {terminal_id}: already {state}")
    if enabled:
        print("its next authentication is accepted")
        return 0
    # Published even when it was already disabled: a message lost the first time is sent again.
    try:
        gateways = await _publish(services.redis_url, settings.redis.prefix, terminal_id)
    except Exception as exc:  # noqa: BLE001 - any Redis failure: the disable holds all the same
        print(f"citycard: Redis unreachable ({type(exc).__name__}: {exc}). The disable holds in Postgres: every new "
              f"authentication of terminal {terminal_id} is refused. Its open connections are closed at "
              f"each gateway's next check (gateway.terminal_check_ms, 30 s by default), not now.",
              file=sys.stderr)
        return 0
    if gateways:
        print(f"{gateways} gateway(s) told: its open connections are closed now (TERMINAL_DISABLED)")
    else:
        print("no gateway is listening on Redis; a running gateway closes its open connections at its next "
              "check (gateway.terminal_check_ms); new authentications are refused")
    return 0


async def _show(settings: Settings, services: Services, terminal_id: int, exact: bool) -> int:
    await migrate_db(settings, services.db_url)
    conn = await connect_app(settings, services)
    try:
        row = await terminals.get(conn, terminal_id)
        if row is not None and exact:
            row |= await terminals.journal_totals(conn, terminal_id)
    finally:
        await conn.close()
    if row is None:
        raise CityCardError(f"terminal {terminal_id} is not registered")
    row["enabled"] = "yes" if row["enabled"] else "no"
    for key, value in row.items():
        print(f"{key}: {value}")
    print("(taps, charged_fen, last_seq: running totals as its session last flushed them, about once a second;"
          " a session actor that dies loses what it had not flushed"
          + ("; journal_*: counted from the journal, exact)" if exact else "; --exact counts the journal)"))
    return 0


def check_key_file(path: Path, force: bool) -> None:
    """Refuse before anything is registered: an existing file is another terminal's key, maybe."""
    if path.exists() and not force:
        raise CityCardError(f"{path} exists: it may hold another terminal's key (--force replaces it)")
    if not path.parent.is_dir():
        raise CityCardError(f"{path.parent} is not a directory: the key file cannot be written there")


def write_key_file(path: Path, key: bytes) -> None:
    """K_t as 64 hex digits and a newline, mode 0600 from the start (never readable by others,
    whatever the umask), replacing the file in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def _register(settings: Settings, services: Services, terminal_id: int, kind: int, route: int, name: str,
                    reason: str, key_file: Path | None = None, force: bool = False) -> int:
    if key_file is not None:
        check_key_file(key_file, force)
    await migrate_db(settings, services.db_url)
    conn = await connect_app(settings, services)
    try:
        there = await terminals.register(conn, terminal_id, kind, route, name, operator=cli_operator(), reason=reason)
    finally:
        await conn.close()
    if there is not None and (there["kind"], there["route"]) != (kind, route):
        raise CityCardError(f"terminal {terminal_id} is already registered as kind {there['kind']} route"
                            f" {there['route']}: choose another id")
    if there is None:
        print(f"terminal {terminal_id}: registered (kind {kind}, route {route}); it may authenticate now")
    else:
        print(f"terminal {terminal_id}: already registered")
    if key_file is not None:
        write_key_file(key_file, terminal_key(settings.city.master_key, terminal_id))
        print(f"its key: {key_file} (mode 0600; install it in the terminal, then delete this copy)")
    return 0


def terminal_main(settings: Settings, action: str, terminal_id: int, reason: str = "", exact: bool = False,
                  kind: int = 0, route: int = 0, name: str = "", key_file: Path | None = None,
                  force: bool = False) -> int:
    if key_file is not None:
        check_key_file(key_file, force)  # before any service starts
    services = resolve_services(settings)
    try:
        if action == "register":
            return asyncio.run(_register(settings, services, terminal_id, kind, route, name, reason, key_file, force))
        if action == "show":
            return asyncio.run(_show(settings, services, terminal_id, exact))
        return asyncio.run(_switch(settings, services, terminal_id, action == "enable", reason))
    finally:
        services.stop()
