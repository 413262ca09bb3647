"""The region lab's cities: N light platforms in this one process (docs/interop.md, "The region
lab"). Each has its own Postgres schema, Redis prefix and Ray namespace, its own gateway port
and link port on 127.0.0.1, cards of its own issuer prefix, and every other city in its
issuer registry with that city's link port and public key."""

import asyncio
import hashlib
import logging
import os
import random
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..cli.runtime import Platform, actor_name
from ..cli.services import Services, connect_app, migrate_db
from ..config.settings import Settings, settings_from_dict
from ..domain.cards import CardStatus, Category
from ..domain.settlement import SettleCode
from ..domain.taps import TapKind
from ..loadtest.city import (
    CARD_SEED_COLUMNS,
    FIRST_TERMINAL_ID,
    CardRow,
    TerminalPlan,
    plan_cards,
    seed_city,
)
from ..persistence import db, settlement

log = logging.getLogger(__name__)
MAX_CITIES = 99  # codes C01..C99
FIRST_PREFIX = 900100  # city i issues cards of prefix FIRST_PREFIX + i (unused by real issuers here)
BUS_COMMISSION_BP = 150  # the lab bus company's contract: 1.5 %
MAX_ROUTE = 40  # bus routes the lab's validators run (all priced by the default fare table)
NAME_RELEASE_S = 10.0
LINK_PORTS = (20_000, 32_000)  # link ports: outside the ephemeral range and Ray's worker ports
PORT_TRIES = 200
_COL = {name: i for i, name in enumerate(CARD_SEED_COLUMNS)}


@dataclass(frozen=True)
class CitySpec:
    index: int
    code: str  # "C01"
    prefix: int  # its cards' issuer number
    schema: str
    link_port: int
    seed: bytes  # its Ed25519 link (and clearing-file) key seed

    @property
    def key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def public_hex(self) -> str:
        return self.key.public_key().public_bytes_raw().hex()


@dataclass
class LabCity:
    spec: CitySpec
    settings: Settings
    platform: Platform
    cards: list[int]  # active cards, usable by the lab's taps
    terminals: list[TerminalPlan]
    link_down: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def code(self) -> str:
        return self.spec.code


def free_port(taken: set[int] | None = None) -> int:
    """A port free now on 127.0.0.1 (the registry needs link ports before platforms start),
    below the kernel's ephemeral range (32768..) and above Ray's worker ports (..19999): a
    port the system hands out for port 0 (a gateway, Ray, another lab) would otherwise take it
    before the city binds it."""
    rng = random.SystemRandom()
    for _ in range(PORT_TRIES):
        port = rng.randrange(*LINK_PORTS)
        if taken is not None and port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if taken is not None:
            taken.add(port)
        return port
    raise RuntimeError(f"no free port in {LINK_PORTS} after {PORT_TRIES} tries")


def plan_specs(n_cities: int, schema_prefix: str) -> list[CitySpec]:
    if not 2 <= n_cities <= MAX_CITIES:
        raise ValueError(f"--cities must be 2..{MAX_CITIES}, got {n_cities}")
    out: list[CitySpec] = []
    taken: set[int] = set()
    for i in range(1, n_cities + 1):
        code = f"C{i:02d}"
        seed = hashlib.sha256(f"citycard region lab {code}".encode()).digest()  # a lab, not a secret
        out.append(CitySpec(i, code, FIRST_PREFIX + i, f"{schema_prefix}_{code.lower()}", free_port(taken),
                            seed))
    return out


def registry(specs: list[CitySpec], floor_limit_fen: int) -> list[dict[str, Any]]:
    return [{"code": s.code, "name": f"Lab city {s.code}", "card_prefix": s.prefix,
             "link": f"127.0.0.1:{s.link_port}", "link_public_key_hex": s.public_hex(),
             "floor_limit_fen": floor_limit_fen} for s in specs]


def city_settings(base: Settings, spec: CitySpec, issuers: list[dict[str, Any]], key_dir: Path,
                  account_shards: int, house_url: str | None = None, house_poll_ms: int = 200) -> Settings:
    key_path = key_dir / f"{spec.code}.key"
    key_path.write_text(spec.seed.hex())
    os.chmod(key_path, 0o600)
    raw = base.as_dict()
    raw["city"] = {**raw["city"], "fare_table": str(own_fare_table(base, spec, key_dir))}
    raw["database"] = {**raw["database"], "schema": spec.schema}
    raw["redis"] = {**raw["redis"], "prefix": spec.schema}
    raw["ray"] = {**raw["ray"], "namespace": f"citycard-region-{spec.code.lower()}"}
    raw["city"] = {**raw["city"], "account_shards": account_shards, "session_shards": 1}
    raw["database"]["pool_size"] = min(int(raw["database"].get("pool_size", 4)), 4)
    raw["metrics"] = {**raw["metrics"], "port": 0}  # no metrics server: N of them would only cost ports
    raw["gateway"] = {**raw["gateway"], "host": "127.0.0.1", "port": 0}
    raw["card"] = {**raw["card"], **card_keys(spec.code)}  # its own issuer keys: its cards' TACs are its own
    raw["region"] = {"own": spec.code, "issuers": issuers, "link_host": "127.0.0.1", "link_port": spec.link_port,
                     "link_key_path": str(key_path), "backoff_min_ms": 100, "backoff_max_ms": 400,
                     "connect_timeout_ms": 300, "tap_timeout_ms": 1000}
    if house_url is not None:  # the city polls the house's suspensions itself
        raw["region"].update(house_url=house_url, house_poll_ms=house_poll_ms, house_timeout_ms=1000)
    return settings_from_dict(raw)


def card_keys(code: str) -> dict[str, str]:
    """The city's own issuer master keys ([card], desk.issuer_keys): a TAC one city's cards make
    does not check under another's. Derived from the code: a lab, not a secret."""
    return {f"issuer_{k}_hex": hashlib.sha256(f"citycard region lab {code} {k}".encode()).digest()[:16].hex()
            for k in ("mpk", "mlk", "mtk")}


def own_fare_table(base: Settings, spec: CitySpec, out_dir: Path) -> Path:
    """The base fare table with this city as its home issuer (its own cards are home cards)."""
    text = base.fare_table_path().read_text(encoding="utf-8")
    found = re.search(r"^home_issuer\s*=\s*\d+", text, flags=re.MULTILINE)
    if found is None:
        raise ValueError(f"{base.fare_table_path()}: no home_issuer line to make the lab cities' tables from")
    path = out_dir / f"{spec.code}-fares.toml"
    path.write_text(text[:found.start()] + f"home_issuer = {spec.prefix}" + text[found.end():], encoding="utf-8")
    return path


def lab_terminals(n_terminals: int, seed: int) -> list[TerminalPlan]:
    """Bus validators only: every tap, home or visitor, has a fare the acquirer's table prices."""
    rng = random.Random(seed)
    return [TerminalPlan(FIRST_TERMINAL_ID + i, int(TapKind.BUS), rng.randint(1, MAX_ROUTE))
            for i in range(n_terminals)]


def usable_cards(rows: list[CardRow]) -> list[int]:
    """Active adult cards without passes: their rides are charged (no free travel to muddle flows)."""
    return [r[_COL["card_no"]] for r in rows
            if r[_COL["category"]] == Category.ADULT and r[_COL["status"]] == CardStatus.ACTIVE
            and r[_COL["monthly_pass_from"]] is None]


async def start_city(settings: Settings, services: Services, spec: CitySpec, n_cards: int,
                     n_terminals: int) -> LabCity:
    await db.drop_schema(services.db_url, spec.schema)
    await migrate_db(settings, services.db_url)
    rows = plan_cards(n_cards, settings.city.account_shards, seed=spec.index, issuer=spec.prefix)
    terminals = lab_terminals(n_terminals, seed=spec.index)
    conn = await connect_app(settings, services)
    try:
        await seed_city(conn, rows, terminals)
        # one bus company runs the lab's validators: its settlement line is the city's own rides
        await settlement.add_counterparty(conn, "lab-bus", "operator", f"{spec.code} bus company", BUS_COMMISSION_BP)
        code, _ = await settlement.attach(conn, "lab-bus", [t.terminal_id for t in terminals])
        if code != SettleCode.OK:
            raise RuntimeError(f"{spec.code}: attaching the validators to the bus company: {code.name}")
    finally:
        await conn.close()
    platform = Platform(settings, services)
    await platform.start(gateway_port=0, api_port=-1)
    return LabCity(spec, settings, platform, usable_cards(rows), terminals)


async def stop_city(city: LabCity) -> None:
    """The whole platform down, as an operator's stop: gateway, link server, desk,
    shards (its Ray actors killed: the next platform loads them again from Postgres)."""
    await city.platform.stop()
    await _names_free(city.settings)


async def _names_free(settings: Settings) -> None:
    """Until the killed actors' names are released (a new actor of that name would otherwise
    be the dying one), bounded."""
    names = [actor_name(settings, "account", i) for i in range(settings.city.account_shards)] + \
            [actor_name(settings, "session", i) for i in range(settings.city.session_shards)]
    deadline = time.monotonic() + NAME_RELEASE_S
    while time.monotonic() < deadline:
        if all(_gone(n, settings.ray.namespace) for n in names):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{settings.database.schema}: Ray actors not released in {NAME_RELEASE_S:g} s")


def _gone(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


async def restart_city(city: LabCity, services: Services) -> None:
    """A new platform on the same settings and schema (it recovers from Postgres), on the same
    gateway port and link port, so its terminals and the other cities reconnect as to a
    restarted real one."""
    port = city.platform.gateway_port
    platform = Platform(city.settings, services)
    try:
        await platform.start(gateway_port=port, api_port=-1)
    except OSError as exc:  # its port taken meanwhile (it was an ephemeral one): any port, its terminals follow
        log.warning("%s: gateway port %s taken (%r): restarting on another", city.code, port, exc)
        await _names_free(city.settings)
        platform = Platform(city.settings, services)
        await platform.start(gateway_port=0, api_port=-1)
    city.platform = platform


__all__ = ["MAX_CITIES", "CitySpec", "LabCity", "card_keys", "city_settings", "plan_specs", "registry",
           "restart_city", "start_city", "stop_city"]
