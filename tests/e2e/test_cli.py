"""The citycard command as an operator runs it: a real process, real services."""

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.loadtest.client import TerminalClient
from tests.support.cli import citycard_env, gateway_port, migrated_city
from tests.support.clock import now_ms


def test_db_migrate_applies_once(configured_services, schema):
    cmd = [sys.executable, "-m", "citycard.cli.main", "db", "migrate"]
    env = citycard_env(configured_services, schema)
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "0001_init.sql" in first.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_bad_config_exits_2_naming_the_key(configured_services, schema):
    env = citycard_env(configured_services, schema) | {"CITYCARD_GATEWAY__MAX_BATCH_TAPS": "5000"}
    out = subprocess.run([sys.executable, "-m", "citycard.cli.main", "db", "migrate"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "gateway.max_batch_taps" in out.stderr


def test_up_serves_taps_until_interrupted(configured_services, schema):
    env = citycard_env(configured_services, schema)
    settings, cards, terminals = migrated_city(env, configured_services, schema, 50, 2)
    proc = subprocess.Popen([sys.executable, "-m", "citycard.cli.main", "up"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "gateway on" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"citycard up exited: {proc.stderr.read()[-2000:]}")
        port = gateway_port(line)

        async def tap() -> int:
            c = TerminalClient(terminals[0].terminal_id, settings.city.master_key)
            await c.connect("127.0.0.1", port)
            r = await c.tap(1, cards[0][0], now_ms(), int(TapKind.BUS), route=9)
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
