"""``citycard token list`` and ``citycard token revoke``: operators' API tokens by their id (the
start of the token's hash, as the API's limits and the audit log name it)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..config.settings import Settings
from ..errors import CityCardError
from ..persistence import tokens
from .services import cli_operator, connect_app, migrate_db, resolve_services

T = TypeVar("T")


def _with_conn(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    services = resolve_services(settings)

    async def run() -> T:
        await migrate_db(settings, services.db_url)
        conn = await connect_app(settings, services)
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    finally:
        services.stop()


def _when(t: Any) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M:%S%z")


def list_main(settings: Settings) -> int:
    rows = _with_conn(settings, tokens.listed)
    table = [("ID", "OPERATOR", "ROLES", "CREATED", "REVOKED")] + [
        (t.token_id, t.operator, ",".join(t.roles), _when(t.created_at), _when(t.revoked_at)) for t in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def revoke_main(settings: Settings, id_prefix: str, reason: str) -> int:
    outcome, found = _with_conn(
        settings, lambda conn: tokens.revoke(conn, id_prefix, operator=cli_operator(), reason=reason))
    if outcome is tokens.Revoke.UNKNOWN:
        raise CityCardError(f"no token has an id starting with {id_prefix!r} (see `citycard token list`)")
    if outcome is tokens.Revoke.AMBIGUOUS:
        names = ", ".join(f"{t.token_id} ({t.operator})" for t in found)
        raise CityCardError(f"{id_prefix!r} names more than one token: {names}; give more of the id")
    t = found[0]
    print(f"token {t.token_id} of {t.operator} ({','.join(t.roles)}): {outcome} at {_when(t.revoked_at)}")
    if outcome is tokens.Revoke.REVOKED:
        print("the API refuses it within 5 seconds (its token cache)")
    return 0
