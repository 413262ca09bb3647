"""One platform per schema, as an operator meets it: a second `up` and a `city seed` under a
running platform are refused in one line naming the holder; a seed into a city already seeded
says how many cards are there and the flag that overrides."""

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import pytest

from citycard.persistence.platform_lock import held_by, take_platform_lock
from tests.support.cli import citycard_env, migrated_city
from tests.support.services import make_settings


def _citycard(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citycard", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    return out.stderr.strip()


def test_second_up_on_the_same_schema_is_refused_naming_the_first(configured_services, schema):
    env = citycard_env(configured_services, schema)
    migrated_city(env, configured_services, schema, 20, 2)
    first = subprocess.Popen([sys.executable, "-m", "citycard", "up"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line, deadline = "", time.monotonic() + 120
        while "gateway on" not in line and time.monotonic() < deadline:
            line = first.stdout.readline()
            if not line and first.poll() is not None:
                pytest.fail(f"citycard up exited: {first.stderr.read()[-2000:]}")
        second = _one_line(_citycard(env, "up"))
        assert f"schema {schema!r} is in use by another platform: citycard up {first.pid}@" in second, second
        assert " since 20" in second and "stop it first" in second
        first.terminate()
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_up_whose_lock_is_taken_by_another_stops_saying_so(configured_services, schema):
    env = citycard_env(configured_services, schema)
    migrated_city(env, configured_services, schema, 20, 2)
    settings = make_settings(configured_services, schema)
    up = subprocess.Popen([sys.executable, "-m", "citycard", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)

    async def steal() -> None:  # its lock session ended (as by a Postgres restart), another start wins
        holder = await held_by(settings, configured_services.db_url)
        conn = await asyncpg.connect(configured_services.db_url)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", holder.backend_pid)
        finally:
            await conn.close()
        thief = await take_platform_lock(settings, configured_services.db_url, "demo", state_file=False)
        try:
            code = await asyncio.to_thread(up.wait, 60)
        finally:
            await thief.release()
        assert code == 1

    try:
        line, deadline = "", time.monotonic() + 120
        while "gateway on" not in line and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line and up.poll() is not None:
                pytest.fail(f"citycard up exited: {up.stderr.read()[-2000:]}")
        asyncio.run(steal())
        err = up.stderr.read()
        assert f"citycard up: lost the platform lock on schema {schema!r}" in err, err[-2000:]
        assert "another platform took it" in err and "citycard demo" in err
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_city_seed_refuses_a_seeded_schema_unless_replace(configured_services, schema):
    env = citycard_env(configured_services, schema)
    migrated_city(env, configured_services, schema, 20, 2)
    refused = _one_line(_citycard(env, "city", "seed", "--scale", "0.0001"))
    assert f"schema {schema!r} already has 20 cards and 2 terminals" in refused and "--replace" in refused
    replaced = _citycard(env, "city", "seed", "--scale", "0.0001", "--replace")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert f"into schema {schema!r}" in replaced.stdout


def test_city_seed_refuses_while_a_platform_holds_the_schema(configured_services, schema):
    env = citycard_env(configured_services, schema)
    settings = make_settings(configured_services, schema)

    async def seed_under_lock() -> subprocess.CompletedProcess[str]:
        lock = await take_platform_lock(settings, configured_services.db_url, "up", state_file=False)
        try:
            return await asyncio.to_thread(_citycard, env, "city", "seed", "--scale", "0.0001")
        finally:
            await lock.release()

    refused = _one_line(asyncio.run(seed_under_lock()))
    assert f"is in use by another platform: citycard up {os.getpid()}@" in refused, refused
    seeded = _citycard(env, "city", "seed", "--scale", "0.0001")  # the platform gone: seeds
    assert seeded.returncode == 0, seeded.stderr[-2000:]
