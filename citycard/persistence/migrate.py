"""Numbered SQL migrations (migrations/NNNN_name.sql), applied once each, under a lock."""

import re
from importlib import resources

import asyncpg

from ..errors import CityCardError
from .roles import DbRoles, adopt, ensure_roles, grant_app, ident

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_ID = 0x0C17_CA4D  # pg_advisory_xact_lock key: one migrator at a time


class MigrationError(CityCardError):
    pass


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) in version order."""
    out = []
    for entry in resources.files("citycard.persistence.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text()))
    out.sort()
    return out


async def migrate(conn: asyncpg.Connection, schema: str, account_shards: int,
                  roles: DbRoles = DbRoles()) -> list[str]:  # noqa: B008 - frozen, so a safe default
    """Apply pending migrations in ``schema`` as the owner role, make the journal partitions for
    the shards and grant the app role what it needs.

    Returns the names applied. Refuses a shard count other than the one the data was made with.
    """
    applied: list[str] = []
    await ensure_roles(conn, roles)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)} AUTHORIZATION {ident(roles.owner)}")
        await conn.execute(f"SET LOCAL search_path TO {ident(schema)}")
        if await _needs_adoption(conn, schema, roles.owner):
            await adopt(conn, schema, roles.owner)
        await conn.execute(f"SET LOCAL ROLE {ident(roles.owner)}")  # what is created below is the owner's
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(name)
        await _ensure_shards(conn, account_shards)
        await _ensure_grants(conn, schema, roles)
    return applied


async def _needs_adoption(conn: asyncpg.Connection, schema: str, owner: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT n.nspowner <> r.oid OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid"
        " AND c.relkind = any('{r,p,v,m,f,S}') AND c.relowner <> r.oid)"
        " FROM pg_namespace n, pg_roles r WHERE n.nspname = $1 AND r.rolname = $2", schema, owner))


async def _ensure_grants(conn: asyncpg.Connection, schema: str, roles: DbRoles) -> None:
    # Granted again when a migration or a partition may have added a table or view, or the roles changed;
    # otherwise left alone (a GRANT rewrites catalog rows of every table).
    tables = await conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'S')", schema)
    mark = f"{roles.owner}:{roles.app}:{tables}"
    if await conn.fetchval("SELECT value FROM meta WHERE key = 'grants'") == mark:
        return
    await grant_app(conn, schema, roles.app)
    await conn.execute("INSERT INTO meta (key, value) VALUES ('grants', $1)"
                       " ON CONFLICT (key) DO UPDATE SET value = excluded.value", mark)


async def _ensure_shards(conn: asyncpg.Connection, account_shards: int) -> None:
    recorded = await conn.fetchval("SELECT value FROM meta WHERE key = 'account_shards'")
    if recorded is None:
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('account_shards', $1)", str(account_shards)
        )
    elif int(recorded) != account_shards:
        raise MigrationError(
            f"city.account_shards is {account_shards} but this database was made with "
            f"{recorded}; resharding a live database is not supported"
        )
    for shard in range(account_shards):
        part = journal_partition(shard)
        # The partition's own default lets the writer COPY rows without the shard column.
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {part} PARTITION OF journal FOR VALUES IN ({shard});"
            f"ALTER TABLE {part} ALTER COLUMN shard_id SET DEFAULT {shard};"
            f"CREATE INDEX IF NOT EXISTS {part}_lsn ON {part} USING brin (lsn);"
        )
        await conn.execute(
            "INSERT INTO shard_heads (shard_id) VALUES ($1) ON CONFLICT DO NOTHING", shard
        )


def journal_partition(shard: int) -> str:
    return f"journal_p{shard}"
