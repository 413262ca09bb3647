"""A running platform with its HTTP API, an httpx client and operator tokens per role."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date

import httpx

from citycard.api.auth import Role, create_token
from citycard.domain.identity import make_citizen_id
from tests.conftest import ServiceUrls
from tests.e2e.helpers import City, running_city


@dataclass
class ApiCity:
    city: City
    http: httpx.AsyncClient
    tokens: dict[str, str]  # role -> token

    def auth(self, role: str = "clerk") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

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
        return int(r.json()["card_no"])

    async def top_up(self, card_no: int, amount_fen: int, key: str, purse: str = "epurse") -> httpx.Response:
        return await self.http.post(f"/cards/{card_no}/topups", headers=self.auth(),
                                    json={"purse": purse, "amount_fen": amount_fen, "idempotency_key": key})


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
