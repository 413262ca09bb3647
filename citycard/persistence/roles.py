"""Database roles: an owner that owns the schema's objects and an app role the platform logs in as.

The owner (NOLOGIN by default) owns every table, so only it, or a superuser, can drop a table or
switch a trigger off; migrations run as it (``SET ROLE``). The app role owns nothing, is no
superuser and no member of the owner: it may read and write the tables it needs, and on the
audit log only read and append. Roles are cluster-wide while a deployment (or a test) lives in
one schema, so creating them is idempotent and survives a concurrent creator.
"""

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from ..errors import CityCardError

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # as config/settings.py checks it
# the app may SELECT and INSERT these, nothing else
APPEND_ONLY_TABLES = ("audit_log", "offline_records", "offline_rejects", "offline_batches", "offline_gaps",
                      "offline_visitor_records")


class RoleError(CityCardError):
    pass


@dataclass(frozen=True)
class DbRoles:
    owner: str = "citycard_owner"
    app: str = "citycard_app"

    def __post_init__(self) -> None:
        for name in (self.owner, self.app):
            if not ROLE_NAME.match(name):
                raise RoleError(f"not a role name: {name!r}")
        if self.owner == self.app:
            raise RoleError("the owner and app roles must differ")


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def app_login_url(url: str, app_role: str) -> str:
    """``url`` with its user replaced by ``app_role`` and no password: for servers that trust the
    connection or a ~/.pgpass that holds the app role's password (asyncpg reads it)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(app_role, safe='')}@{host}"))


async def _create_role(conn: asyncpg.Connection, name: str, options: str) -> None:
    # The exception block is a subtransaction: a concurrent creator (another schema, another
    # database of the cluster) that wins the race leaves us a duplicate, which is what we wanted.
    await conn.execute(f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
        CREATE ROLE {ident(name)} {options};
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$""")


async def ensure_roles(conn: asyncpg.Connection, roles: DbRoles) -> None:
    """Create the roles if missing and let the connected user act as the owner; refuse an app
    role that could undo the audit log's guards. Runs outside the migration transaction."""
    have = {r["rolname"]: r for r in await conn.fetch(
        "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = any($1::text[])",
        [roles.owner, roles.app])}
    if len(have) < 2:
        try:
            await _create_role(conn, roles.owner, "NOLOGIN")
            await _create_role(conn, roles.app, "LOGIN")
        except asyncpg.InsufficientPrivilegeError:
            raise RoleError(
                f"roles {roles.owner!r} and {roles.app!r} are missing and the migration login may not"
                " create them: create them as a superuser (see docs/operations.md)") from None
    app = await conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", roles.app)
    if app["rolsuper"] or app["rolbypassrls"]:
        raise RoleError(f"the app role {roles.app!r} must not be a superuser")
    if await conn.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", roles.app, roles.owner):
        raise RoleError(f"the app role {roles.app!r} must not be a member of the owner {roles.owner!r}")
    if not await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", roles.owner):
        try:
            await conn.execute(f"GRANT {ident(roles.owner)} TO CURRENT_USER")
        except asyncpg.PostgresError as exc:
            raise RoleError(f"the migration login cannot act as the owner role {roles.owner!r}: {exc}") from None


async def adopt(conn: asyncpg.Connection, schema: str, owner: str) -> None:
    """Give the owner role the schema and what is in it (a deployment migrated before the roles
    existed: its objects belong to whoever ran the migrations)."""
    await conn.execute(f"ALTER SCHEMA {ident(schema)} OWNER TO {ident(owner)}")
    # Tables first: their owned sequences follow them (and cannot be given away on their own).
    for kinds in (("r", "p", "v", "m", "f"), ("S",)):
        rows = await conn.fetch(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind::text = any($2::text[])"
            " AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = $3)", schema, list(kinds), owner)
        for r in rows:
            what = "SEQUENCE" if r["relkind"] == "S" else "TABLE"
            await conn.execute(f"ALTER {what} {ident(schema)}.{ident(r['relname'])} OWNER TO {ident(owner)}")
    for r in await conn.fetch(
            "SELECT p.oid::regprocedure::text AS sig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = $1 AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = $2)", schema, owner):
        await conn.execute(f"ALTER ROUTINE {r['sig']} OWNER TO {ident(owner)}")  # search_path names the schema


async def grant_app(conn: asyncpg.Connection, schema: str, app: str) -> None:
    """The app role's privileges, from scratch (run as the owner, in the migration's transaction)."""
    s, a = ident(schema), ident(app)
    await conn.execute(f"""
GRANT USAGE ON SCHEMA {s} TO {a};
REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {a};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {a};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {a};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {a};""")
    for table in APPEND_ONLY_TABLES:
        await conn.execute(f"REVOKE UPDATE, DELETE ON {s}.{ident(table)} FROM {a}")


async def check_app_login(conn: asyncpg.Connection) -> None:
    """Refuse to run the platform as a superuser: it could switch the audit log's guards off."""
    if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        user = await conn.fetchval("SELECT current_user")
        raise RoleError(f"the platform's database login {user!r} is a superuser; give it the app role"
                        " (database.app_url or database.app_role)")
