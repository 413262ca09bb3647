"""The platform's database login has the least privileges it needs: it owns nothing, is no
superuser, and may only read and append the audit log. On the machine's Postgres and the embedded one."""

import asyncio
import uuid

import asyncpg
import pytest

from citycard.cli.runtime import Platform
from citycard.cli.services import Services, connect_app, migrate_db
from citycard.persistence import db
from citycard.persistence.migrate import migrate, migration_files
from citycard.persistence.roles import DbRoles, RoleError, ident
from tests.support.migrations import migrated_by_hand
from tests.support.services import ServiceUrls, make_settings

APPEND = "INSERT INTO audit_log (operator, role, action, subject) VALUES ('clerk-1', 'clerk', 'card.top_up', 'card:1')"


async def _app_conn(urls: ServiceUrls, schema: str) -> asyncpg.Connection:
    """Migrated as the CLI and the platform do it, then the platform's own login."""
    settings = make_settings(urls, schema)
    await migrate_db(settings, urls.db_url)
    return await connect_app(settings, Services(urls.db_url, urls.redis_url))


@pytest.mark.parametrize("sql", [
    "TRUNCATE audit_log",
    "UPDATE audit_log SET operator = 'someone else'",
    "DELETE FROM audit_log",
    "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change",
    "ALTER TABLE audit_log DISABLE TRIGGER ALL",
    "DROP TRIGGER audit_log_no_truncate ON audit_log",
    "DROP TABLE audit_log",
])
def test_the_platform_login_cannot_rewrite_or_empty_the_audit_log(services, schema, sql):
    async def scenario() -> None:
        conn = await _app_conn(services, schema)
        try:
            await conn.execute(APPEND)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == 1
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_the_platform_login_appends_and_reads_the_audit_log_and_owns_nothing(services, schema):
    async def scenario() -> None:
        conn = await _app_conn(services, schema)
        try:
            assert await conn.fetchval("SELECT current_user") == "citycard_app"
            await conn.execute(APPEND)
            assert await conn.fetchval("SELECT action FROM audit_log") == "card.top_up"
            me = await conn.fetchrow("SELECT oid, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles"
                                     " WHERE rolname = current_user")
            assert not (me["rolsuper"] or me["rolcreaterole"] or me["rolbypassrls"])
            assert not await conn.fetchval("SELECT pg_has_role(current_user, 'citycard_owner', 'MEMBER')")
            owned = await conn.fetch("SELECT relname FROM pg_class WHERE relowner = $1 AND relpersistence <> 't'",
                                     me["oid"])
            assert owned == []
            truncatable = await conn.fetch(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('r', 'p')"
                " AND has_table_privilege(c.oid, 'TRUNCATE')", schema)
            assert truncatable == []
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_even_the_owner_cannot_truncate_the_audit_log(services, schema):
    async def scenario() -> None:
        settings = make_settings(services, schema)
        await migrate_db(settings, services.db_url)
        conn = await db.connect(services.db_url, schema)
        try:
            await conn.execute(APPEND)
            assert await conn.fetchval("SELECT tableowner FROM pg_tables WHERE schemaname = $1"
                                       " AND tablename = 'audit_log'", schema) == "citycard_owner"
            await conn.execute("SET ROLE citycard_owner")
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute("TRUNCATE audit_log")
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == 1
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_the_platform_refuses_a_superuser_login(services, schema):
    async def scenario() -> None:
        settings = make_settings(services, schema, database={"app_url": services.db_url})
        platform = Platform(settings, Services(services.db_url, services.redis_url, app_db_url=services.db_url))
        with pytest.raises(RoleError, match="superuser"):
            await platform.start(gateway_port=0, metrics_port=0, api_port=-1)

    asyncio.run(scenario())


def test_a_schema_migrated_before_the_roles_is_handed_to_the_owner(configured_services, schema):
    """A deployment whose tables belong to the superuser that migrated it (the old way)."""

    async def scenario() -> None:
        conn = await db.connect(configured_services.db_url, schema)
        try:
            await migrated_by_hand(conn, schema, 5)
            await conn.execute(APPEND)
            assert await migrate(conn, schema, 2) == [name for version, name, _ in migration_files() if version >= 6]
            strays = await conn.fetch(
                "SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind IN ('r','p','v','S')"
                " AND pg_get_userbyid(relowner) <> 'citycard_owner'", schema)
            assert strays == []
            assert await conn.fetchval("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1",
                                       schema) == "citycard_owner"
        finally:
            await conn.close()
        app = await connect_app(make_settings(configured_services, schema),
                                Services(configured_services.db_url, configured_services.redis_url))
        try:
            await app.execute(APPEND)
            assert await app.fetchval("SELECT count(*) FROM audit_log") == 2
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("TRUNCATE audit_log")
        finally:
            await app.close()

    asyncio.run(scenario())


def test_roles_of_its_own_name_made_once_by_concurrent_migrations(configured_services):
    """Roles are the cluster's, schemas a deployment's: three deployments sharing new role names
    migrate at once, and each gets them."""
    tag = uuid.uuid4().hex[:8]
    roles = DbRoles(f"t_owner_{tag}", f"t_app_{tag}")
    schemas = [f"t_{tag}_{i}" for i in range(3)]

    async def scenario() -> None:
        conns = [await db.connect(configured_services.db_url, s) for s in schemas]
        try:
            await asyncio.wait_for(asyncio.gather(*(migrate(c, s, 2, roles) for c, s in zip(conns, schemas,
                                                                                           strict=True))), 120)
            for s in schemas:
                assert await conns[0].fetchval("SELECT tableowner FROM pg_tables WHERE schemaname = $1"
                                               " AND tablename = 'audit_log'", s) == roles.owner
                assert await conns[0].fetchval(f"SELECT has_table_privilege($1, '{s}.audit_log', 'INSERT')",
                                               roles.app)
        finally:
            for s in schemas:
                await conns[0].execute(f"DROP SCHEMA IF EXISTS {ident(s)} CASCADE")
            for r in (roles.app, roles.owner):
                await conns[0].execute(f"DROP OWNED BY {ident(r)}")
                await conns[0].execute(f"DROP ROLE {ident(r)}")
            for c in conns:
                await c.close()

    asyncio.run(scenario())
