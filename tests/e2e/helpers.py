"""Start a real platform (Postgres, Redis, Ray actors, TCP gateway) with a small seeded city."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from citycard.cli.runtime import Platform, Services, migrate_db
from citycard.config.settings import Settings
from citycard.loadtest.city import TerminalPlan, plan_cards, plan_terminals, seed_city
from citycard.loadtest.client import TerminalClient
from citycard.persistence import db
from tests.conftest import ServiceUrls, make_settings


@dataclass
class City:
    platform: Platform
    settings: Settings
    cards: list[tuple]  # rows of plan_cards, by CARD_SEED_COLUMNS: card_no, shard_id, ..., opening_fen, ...
    terminals: list[TerminalPlan]

    @property
    def port(self) -> int:
        return self.platform.gateway_port

    async def client(self, terminal_id: int | None = None) -> TerminalClient:
        tid = terminal_id or self.terminals[0].terminal_id
        c = TerminalClient(tid, self.settings.city.master_key)
        await c.connect("127.0.0.1", self.port)
        return c

    async def conn(self):  # noqa: ANN201 - asyncpg.Connection
        return await db.connect(self.platform.services.db_url, self.settings.database.schema)


@asynccontextmanager
async def running_city(urls: ServiceUrls, schema: str, *, n_cards: int = 300, n_terminals: int = 6,
                       **sections: dict[str, object]) -> AsyncIterator[City]:
    settings = make_settings(urls, schema, **sections)
    services = Services(urls.db_url, urls.redis_url)
    await migrate_db(settings, urls.db_url)
    cards = plan_cards(n_cards, settings.city.account_shards, seed=3)
    terminals = plan_terminals(n_terminals, seed=3)
    conn = await db.connect(urls.db_url, schema)
    try:
        await seed_city(conn, cards, terminals)
    finally:
        await conn.close()
    platform = Platform(settings, services)
    await platform.start(gateway_port=0, metrics_port=0, api_port=0)
    try:
        yield City(platform, settings, cards, terminals)
    finally:
        await platform.stop()
