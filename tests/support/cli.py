"""The citycard command in its own process: its environment, its readiness line, and a small
city migrated and seeded for it."""

import asyncio
import os
import subprocess
import sys

from citycard.config.settings import Settings, load_settings
from citycard.loadtest.city import TerminalPlan, plan_cards, plan_terminals, seed_city
from citycard.persistence import db
from tests.support.services import ServiceUrls

CITYCARD = [sys.executable, "-m", "citycard.cli.main"]


def citycard_env(urls: ServiceUrls, schema: str, ray_namespace: str = "cli", **extra: str) -> dict[str, str]:
    """This process's environment pointed at ``urls`` and ``schema``, every port picked by the OS.
    No RAY_ADDRESS is inherited: the command never joins this process's Ray (``extra`` may set one)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({
        "CITYCARD_DATABASE_URL": urls.db_url,
        "CITYCARD_REDIS_URL": urls.redis_url,
        "CITYCARD_DATABASE__SCHEMA": schema,
        "CITYCARD_REDIS__PREFIX": schema,
        "CITYCARD_GATEWAY__PORT": "0",
        "CITYCARD_METRICS__PORT": "0",
        "CITYCARD_RAY__NAMESPACE": f"{ray_namespace}-{schema}",
    })
    env.update(extra)
    return env


def gateway_port(line: str) -> int:
    """The port in ``citycard up``'s readiness line: "citycard up: gateway on HOST:PORT, ..."."""
    return int(line.split("gateway on ")[1].split(",")[0].rsplit(":", 1)[1])


def migrated_city(env: dict[str, str], urls: ServiceUrls, schema: str, n_cards: int, n_terminals: int,
                  shards: int | None = None) -> tuple[Settings, list[tuple], list[TerminalPlan]]:
    """``citycard db migrate`` in its own process, then a small city (seed 5) seeded into the schema."""
    subprocess.run([*CITYCARD, "db", "migrate"], env=env, check=True, capture_output=True, timeout=120)
    settings = load_settings(env={}, overrides={"database": {"schema": schema}})
    cards = plan_cards(n_cards, shards or settings.city.account_shards, seed=5)
    terminals = plan_terminals(n_terminals, seed=5)

    async def seed() -> None:
        conn = await db.connect(urls.db_url, schema)
        try:
            await seed_city(conn, cards, terminals)
        finally:
            await conn.close()

    asyncio.run(seed())
    return settings, cards, terminals


async def run_citycard(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The command in its own process, awaited; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "citycard.cli.main", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()

