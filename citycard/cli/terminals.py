"""``citycard terminal disable|enable|show``: an operator's switch for one terminal.

A disable is committed in Postgres first, so it holds even if Redis is away; Redis only
makes the running gateways close the terminal's open connections at once.
"""

import asyncio
import sys

import redis.asyncio as aioredis

from ..config.settings import Settings
from ..errors import CityCardError
from ..persistence import terminals
from .runtime import Services, cli_operator, connect_app, migrate_db, resolve_services

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


async def _register(settings: Settings, services: Services, terminal_id: int, kind: int, route: int, name: str,
                    reason: str) -> int:
    await migrate_db(settings, services.db_url)
    conn = await connect_app(settings, services)
    try:
        there = await terminals.register(conn, terminal_id, kind, route, name, operator=cli_operator(), reason=reason)
    finally:
        await conn.close()
    if there is None:
        print(f"terminal {terminal_id}: registered (kind {kind}, route {route}); it may authenticate now")
        return 0
    if (there["kind"], there["route"]) != (kind, route):
        raise CityCardError(f"terminal {terminal_id} is already registered as kind {there['kind']} route"
                            f" {there['route']}: choose another id")
    print(f"terminal {terminal_id}: already registered")
    return 0


def terminal_main(settings: Settings, action: str, terminal_id: int, reason: str = "", exact: bool = False,
                  kind: int = 0, route: int = 0, name: str = "") -> int:
    services = resolve_services(settings)
    try:
        if action == "register":
            return asyncio.run(_register(settings, services, terminal_id, kind, route, name, reason))
        if action == "show":
            return asyncio.run(_show(settings, services, terminal_id, exact))
        return asyncio.run(_switch(settings, services, terminal_id, action == "enable", reason))
    finally:
        services.stop()
