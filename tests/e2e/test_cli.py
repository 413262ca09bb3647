"""The citycard command as an operator runs it: a real process, real services."""

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from citycard.api.auth import hash_token, token_id
from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.loadtest.client import TerminalClient
from citycard.persistence import db, tokens
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


def _citycard(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citycard.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_token_list_and_revoke_by_id(configured_services, schema):
    env = citycard_env(configured_services, schema)
    created = _citycard(env, "token", "create", "--operator", "alice", "--role", "clerk", "--role", "payment")
    assert created.returncode == 0, created.stderr
    alice = token_id(hash_token(created.stdout.strip()))
    assert _citycard(env, "token", "create", "--operator", "bob", "--role", "auditor").returncode == 0

    listed = _citycard(env, "token", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "OPERATOR", "ROLES", "CREATED", "REVOKED"]
    assert [r.split()[:3] for r in rows][0] == [alice, "alice", "clerk,payment"]
    assert [r.split()[-1] for r in rows] == ["-", "-"]

    revoked = _citycard(env, "token", "revoke", alice[:6], "--reason", "left the counter")
    assert revoked.returncode == 0, revoked.stderr
    assert f"token {alice} of alice" in revoked.stdout and ": revoked at" in revoked.stdout
    again = _citycard(env, "token", "revoke", alice)
    assert again.returncode == 0 and "already revoked" in again.stdout, again.stderr
    rows = _citycard(env, "token", "list").stdout.splitlines()[1:]
    assert rows[0].split()[-1] != "-" and rows[1].split()[-1] == "-"  # bob's token untouched

    async def audit() -> list[tuple[str, str, str]]:
        conn = await db.connect(configured_services.db_url, schema)
        try:
            return [tuple(r) for r in await conn.fetch(
                "SELECT action, subject, reason FROM audit_log WHERE action LIKE 'token.%'")]
        finally:
            await conn.close()

    assert asyncio.run(audit()) == [("token.revoke", f"token:{alice}", "left the counter")]  # once


def test_token_revoke_refuses_unknown_and_ambiguous_ids(configured_services, schema):
    env = citycard_env(configured_services, schema)
    assert _citycard(env, "db", "migrate").returncode == 0

    async def two_alike() -> None:  # two tokens whose ids share their first four digits
        conn = await db.connect(configured_services.db_url, schema)
        try:
            await tokens.insert(conn, bytes.fromhex("abcd01") + bytes(29), "carol", ["clerk"])
            await tokens.insert(conn, bytes.fromhex("abcd02") + bytes(29), "dave", ["clerk"])
        finally:
            await conn.close()

    asyncio.run(two_alike())
    ambiguous = _citycard(env, "token", "revoke", "abcd")
    assert ambiguous.returncode == 2 and "more than one token" in ambiguous.stderr, ambiguous.stderr
    assert "abcd01000000 (carol)" in ambiguous.stderr and "abcd02000000 (dave)" in ambiguous.stderr
    unknown = _citycard(env, "token", "revoke", "0123456789ab")
    assert unknown.returncode == 2 and "no token has an id starting with '0123456789ab'" in unknown.stderr
    not_hex = _citycard(env, "token", "revoke", "cc_nothex")
    assert not_hex.returncode == 2 and "hex digits" in not_hex.stderr
    assert "Traceback" not in ambiguous.stderr + unknown.stderr + not_hex.stderr
    rows = _citycard(env, "token", "list").stdout.splitlines()[1:]
    assert [r.split()[-1] for r in rows] == ["-", "-"]  # nothing revoked



def test_version_and_python_dash_m_name_the_same_release():
    import pathlib
    from importlib.metadata import version

    import citycard

    script = pathlib.Path(sys.executable).with_name("citycard")
    for argv in ([sys.executable, "-m", "citycard", "--version"], [str(script), "--version"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.strip() == f"citycard {citycard.__version__}", argv
    assert version("citycard") == citycard.__version__  # the metadata reads the same attribute


def test_up_help_lists_every_setting_with_its_variable():
    out = subprocess.run([sys.executable, "-m", "citycard", "up", "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "gateway.port = 7700  (CITYCARD_GATEWAY__PORT)" in out
    assert "database.url = " in out and "(CITYCARD_DATABASE_URL)" in out
    assert "(RAY_ADDRESS)" in out


def _up_refused(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "citycard", "up"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_up_with_a_bad_fare_table_says_so_in_one_line(configured_services, schema, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("home_issuer = 'x'\n")
    out = _up_refused(citycard_env(configured_services, schema) | {"CITYCARD_CITY__FARE_TABLE": str(bad)})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert str(bad) in out.stderr


@pytest.mark.parametrize("key", ["GATEWAY", "METRICS", "API"])
def test_up_on_a_port_in_use_names_the_setting(configured_services, schema, key):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = citycard_env(configured_services, schema) | {f"CITYCARD_{key}__PORT": str(port),
                                                             f"CITYCARD_{key}__HOST": "127.0.0.1"}
        out = _up_refused(env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"127.0.0.1:{port} is in use" in out.stderr and f"CITYCARD_{key}__PORT" in out.stderr


def test_loadtest_on_a_metrics_port_in_use_names_the_setting(configured_services, schema):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = citycard_env(configured_services, schema) | {"CITYCARD_METRICS__PORT": str(port),
                                                             "CITYCARD_METRICS__HOST": "127.0.0.1"}
        out = subprocess.run([sys.executable, "-m", "citycard", "loadtest", "--duration", "1", "--no-report"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and f"127.0.0.1:{port} is in use" in out.stderr, out.stderr[-2000:]
    assert "CITYCARD_METRICS__PORT" in out.stderr
