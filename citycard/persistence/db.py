"""Connections: every connection of one deployment works in its own Postgres schema."""

from typing import Any

import asyncpg


def _server_settings(schema: str) -> dict[str, str]:
    return {"search_path": schema, "application_name": "citycard"}


async def connect(url: str, schema: str, **kwargs: Any) -> asyncpg.Connection:
    return await asyncpg.connect(url, server_settings=_server_settings(schema), **kwargs)


async def drop_schema(url: str, schema: str) -> None:
    """Drops the schema and everything in it (the demo's and the labs' fresh starts)."""
    conn = await asyncpg.connect(url, server_settings=_server_settings("public"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def create_pool(url: str, schema: str, size: int, **kwargs: Any) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url, min_size=1, max_size=size, server_settings=_server_settings(schema), **kwargs
    )
