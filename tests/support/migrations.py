"""A schema migrated by hand up to a version, as an older release left it, so a test can run
``migrate`` over it and check what the later migrations do."""

from typing import Any

from citycard.persistence.migrate import migration_files
from citycard.persistence.roles import ident


async def migrated_by_hand(conn: Any, schema: str, up_to: int) -> None:
    """Create ``schema`` and apply migrations 1..``up_to`` as the connected (super)user."""
    await conn.execute(f"CREATE SCHEMA {ident(schema)}")
    await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                       " applied_at timestamptz NOT NULL DEFAULT now())")
    for version, name, sql in migration_files():
        if version <= up_to:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
