"""A real platform (Postgres, Redis, Ray actors, TCP gateway, HTTP API) with a small seeded city,
and views of it that tests share."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date

import httpx

from citycard.api.auth import Role, create_token
from citycard.cli.runtime import Platform
from citycard.cli.services import Services, migrate_db
from citycard.config.settings import Settings
from citycard.domain.cards import CardStatus, Category
from citycard.domain.identity import make_citizen_id
from citycard.loadtest.city import (
    CARD_SEED_COLUMNS,
    TerminalPlan,
    plan_cards,
    plan_terminals,
    seed_city,
)
from citycard.loadtest.client import TerminalClient
from citycard.persistence import db
from tests.support.services import ServiceUrls, make_settings

COL = {name: i for i, name in enumerate(CARD_SEED_COLUMNS)}  # column name -> index in a card row


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


def plain_cards(city: City) -> list[int]:
    """Active adult cards with no pass or allowance: a bus ride costs the plain card fare."""
    return [c[COL["card_no"]] for c in city.cards
            if c[COL["category"]] == Category.ADULT and c[COL["status"]] == CardStatus.ACTIVE
            and c[COL["monthly_pass_from"]] is None and c[COL["opening_allowance_fen"]] == 0]


async def journal_rows(city: City, terminal_id: int) -> list[tuple[int, int, int, int]]:
    """(seq, card_no, result, amount_fen) of one terminal's journal rows, by seq."""
    conn = await city.conn()
    try:
        rows = await conn.fetch(
            "SELECT seq, card_no, result, amount_fen FROM journal WHERE terminal_id = $1 ORDER BY seq",
            terminal_id,
        )
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


# -- the same platform through its HTTP API ------------------------------------------------
@dataclass
class ApiCity:
    city: City
    http: httpx.AsyncClient
    tokens: dict[str, str]  # role -> token
    citizen_ids: dict[int, str] = field(default_factory=dict)  # card_no -> its holder's, for self-service

    def auth(self, role: str = "clerk") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def log_in(self, card_no: int, pin: str, citizen_id: str | None = None,
                     headers: dict[str, str] | None = None) -> httpx.Response:
        """POST /self/session with the card's own holder's identity number unless one is given."""
        return await self.http.post("/self/session", headers=headers, json={
            "card_no": card_no, "citizen_id": citizen_id or self.citizen_ids[card_no], "pin": pin})

    async def session(self, card_no: int, pin: str) -> dict[str, str]:
        """Headers of a fresh self-service session for the card."""
        r = await self.log_in(card_no, pin)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['session_token']}"}

    async def new_holder(self, serial: int, category: str = "adult", born: date = date(1990, 5, 17)) -> dict:
        r = await self.http.post("/holders", headers=self.auth(), json={
            "citizen_id": make_citizen_id(330106, born, serial), "name": f"Holder {serial}",
            "birth_date": born.isoformat(), "category": category})
        assert r.status_code == 201, r.text
        return r.json()

    async def new_card(self, serial: int, **issue: object) -> int:
        holder = await self.new_holder(serial)
        r = await self.http.post(f"/holders/{holder['holder_id']}/cards", headers=self.auth(), json=issue)
        assert r.status_code == 201, r.text
        card_no = int(r.json()["card_no"])
        self.citizen_ids[card_no] = holder["citizen_id"]
        return card_no

    async def top_up(self, card_no: int, amount_fen: int, key: str, purse: str = "epurse") -> httpx.Response:
        return await self.http.post(f"/cards/{card_no}/topups", headers=self.auth(),
                                    json={"purse": purse, "amount_fen": amount_fen, "idempotency_key": key})


def cid(serial: int, born: date = date(1990, 5, 17)) -> str:
    """A valid citizen id of the test city's district."""
    return make_citizen_id(330106, born, serial)


async def programme(api: ApiCity, kind: str = "welfare", amount_fen: int = 1000, **extra: object) -> int:
    """A new disbursement programme, by the programme admin."""
    r = await api.http.post("/programmes", headers=api.auth("programme_admin"),
                            json={"name": f"{kind} test", "kind": kind, "amount_fen": amount_fen, **extra})
    assert r.status_code == 201, r.text
    return int(r.json()["programme_id"])


@asynccontextmanager
async def api_city(urls: ServiceUrls, schema: str, **kw: object) -> AsyncIterator[ApiCity]:
    async with running_city(urls, schema, **kw) as city:  # type: ignore[arg-type]
        conn = await city.conn()
        try:
            tokens = {r.value: await create_token(conn, f"test-{r.value}", [r]) for r in Role}
        finally:
            await conn.close()
        base = f"http://127.0.0.1:{city.platform.api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            yield ApiCity(city, http, tokens)


async def actor_balances(city: City) -> dict[int, int]:
    """Every card's balance as its shard actor holds it, for run_audit."""
    out: dict[int, int] = {}
    for part in await asyncio.gather(*[a.balances.remote() for a in city.platform.shards]):
        out.update(part)
    return out
