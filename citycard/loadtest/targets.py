"""What the load lab drives: a platform of its own on a freshly seeded city, or a running
platform (``--target host:port``) whose city is read from its database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..cli.runtime import Platform
from ..cli.services import Services, connect_app, migrate_db
from ..config.settings import Settings
from ..domain.cards import HANGZHOU_ISSUER, CardStatus, issuer_of
from ..errors import CityCardError
from ..persistence.db import drop_schema
from .city import (
    CityModel,
    TerminalPlan,
    home_card_numbers,
    iter_city_cards,
    plan_city_terminals,
    seed_city,
    visitor_card_numbers,
)
from .lab import Endpoint
from .offline_gen import is_validator


@dataclass
class Target:
    endpoint: Endpoint
    db_url: str
    schema: str
    account_shards: int | None
    description: str
    platform: Platform | None = None
    api_url: str | None = None
    api_token: str | None = None


@dataclass
class CityView:
    terminals: list[TerminalPlan]
    home_cards: Sequence[int]
    visitor_cards: list[int]
    first_seq: dict[int, int] = field(default_factory=dict)


async def seed_model(conn: Any, model: CityModel, n_shards: int, seed: int) -> list[TerminalPlan]:
    terminals = plan_city_terminals(model, seed)
    first = True
    for chunk in iter_city_cards(model, n_shards, seed):
        await seed_city(conn, chunk, terminals if first else [])
        first = False
    return terminals


async def own_platform(settings: Settings, services: Services, model: CityModel, seed: int,
                       with_api: bool) -> tuple[Target, CityView]:
    schema = settings.database.schema
    await drop_schema(services.db_url, schema)
    await migrate_db(settings, services.db_url)
    conn = await connect_app(settings, services)
    try:
        terminals = await seed_model(conn, model, settings.city.account_shards, seed)
        token = None
        if with_api:
            from ..api.auth import Role, create_token

            token = await create_token(conn, "loadtest", [Role.CLERK])
    finally:
        await conn.close()
    platform = Platform(settings, services)
    # metrics on the configured port (default 9108), so an operator can watch the run
    await platform.start(gateway_port=0, metrics_port=None, api_port=0 if with_api else -1)
    target = Target(
        Endpoint("127.0.0.1", platform.gateway_port, settings.city.master_key), services.db_url, schema,
        settings.city.account_shards, "own platform (embedded defaults)" if services.embedded else "own platform",
        platform=platform, api_url=f"http://127.0.0.1:{platform.api_port}" if with_api else None, api_token=token,
    )
    view = CityView(terminals, home_card_numbers(model), visitor_card_numbers(model))
    return target, view


async def remote_target(settings: Settings, services: Services, host: str, port: int,
                        api_url: str | None, api_token: str | None) -> tuple[Target, CityView]:
    """A running platform: its city is read from its database (the same configuration)."""
    schema = settings.database.schema
    conn = await connect_app(settings, services)
    try:
        rows = await conn.fetch("SELECT terminal_id, kind, route FROM terminals WHERE enabled ORDER BY terminal_id")
        if not rows:
            raise CityCardError(f"no terminals in {schema!r}: seed a city first (citycard city seed), "
                                "then start the platform (citycard up)")
        cards = await conn.fetch("SELECT card_no FROM cards WHERE status = $1 ORDER BY card_no",
                                 int(CardStatus.ACTIVE))
        last = await conn.fetch("SELECT terminal_id, max(seq) FROM journal WHERE terminal_id <> 0 GROUP BY 1")
    finally:
        await conn.close()
    # the load lab's offline validators (offline_prep.py) are not online terminals
    terminals = [TerminalPlan(r[0], r[1], r[2]) for r in rows if not is_validator(r[0])]
    home = [r[0] for r in cards if issuer_of(r[0]) == HANGZHOU_ISSUER]
    visitors = [r[0] for r in cards if issuer_of(r[0]) != HANGZHOU_ISSUER]
    if not home:
        raise CityCardError(f"no active home cards in {schema!r}: seed a city first (citycard city seed)")
    target = Target(Endpoint(host, port, settings.city.master_key), services.db_url, schema,
                    settings.city.account_shards, f"{host}:{port}", api_url=api_url, api_token=api_token)
    return target, CityView(terminals, home, visitors, {r[0]: int(r[1]) + 1 for r in last})
