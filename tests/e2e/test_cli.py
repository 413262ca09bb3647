"""The citycard command as an operator runs it: a real process, real services."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from citycard.config.settings import load_settings
from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.loadtest.city import plan_cards, plan_terminals, seed_city
from citycard.loadtest.client import TerminalClient
from citycard.persistence import db


def _env(urls, schema: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CITYCARD_DATABASE_URL": urls.db_url,
        "CITYCARD_REDIS_URL": urls.redis_url,
        "CITYCARD_DATABASE__SCHEMA": schema,
        "CITYCARD_REDIS__PREFIX": schema,
        "CITYCARD_GATEWAY__PORT": "0",
        "CITYCARD_METRICS__PORT": "0",
        "CITYCARD_RAY__NAMESPACE": f"cli-{schema}",
    })
    env.pop("RAY_ADDRESS", None)
    return env


def test_db_migrate_applies_once(configured_services, schema):
    cmd = [sys.executable, "-m", "citycard.cli.main", "db", "migrate"]
    env = _env(configured_services, schema)
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "0001_init.sql" in first.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_bad_config_exits_2_naming_the_key(configured_services, schema):
    env = _env(configured_services, schema) | {"CITYCARD_GATEWAY__MAX_BATCH_TAPS": "5000"}
    out = subprocess.run([sys.executable, "-m", "citycard.cli.main", "db", "migrate"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "gateway.max_batch_taps" in out.stderr


def test_up_serves_taps_until_interrupted(configured_services, schema):
    env = _env(configured_services, schema)
    subprocess.run([sys.executable, "-m", "citycard.cli.main", "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=120)
    settings = load_settings(env={}, overrides={"database": {"schema": schema}})
    cards = plan_cards(50, settings.city.account_shards, seed=5)
    terminals = plan_terminals(2, seed=5)

    async def seed() -> None:
        conn = await db.connect(configured_services.db_url, schema)
        try:
            await seed_city(conn, cards, terminals)
        finally:
            await conn.close()

    asyncio.run(seed())
    proc = subprocess.Popen([sys.executable, "-m", "citycard.cli.main", "up"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "gateway on" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"citycard up exited: {proc.stderr.read()[-2000:]}")
        port = int(line.split("gateway on ")[1].split(",")[0].rsplit(":", 1)[1])

        async def tap() -> int:
            c = TerminalClient(terminals[0].terminal_id, settings.city.master_key)
            await c.connect("127.0.0.1", port)
            r = await c.tap(1, cards[0][0], int(time.time() * 1000), int(TapKind.BUS), route=9)
            await c.close()
            return r.code

        assert asyncio.run(tap()) == Result.OK
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args", [["--taps", "0"], ["--batch", "1001"], ["--window", "-1"]])
def test_demo_refuses_bad_arguments_before_starting_anything(args):
    out = subprocess.run([sys.executable, "-m", "citycard.cli.main", "demo", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--" in out.stderr and "Traceback" not in out.stderr
