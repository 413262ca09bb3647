"""One running platform per schema: the Postgres advisory lock and the state dir's flock."""

import asyncio
import os

import asyncpg
import pytest

from citycard.persistence.platform_lock import PlatformLocked, held_by, take_platform_lock
from tests.support.services import make_settings


async def _terminate(db_url: str, backend_pid: int) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", backend_pid)
    finally:
        await conn.close()


async def _until(cond, timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_second_holder_is_refused_naming_the_first(configured_services, schema):
    settings = make_settings(configured_services, schema)

    async def run() -> None:
        assert await held_by(settings, configured_services.db_url) is None
        first = await take_platform_lock(settings, configured_services.db_url, "up", state_file=False)
        try:
            with pytest.raises(PlatformLocked) as refused:
                await take_platform_lock(settings, configured_services.db_url, "demo", state_file=False)
            line = str(refused.value)
            assert f"citycard up {os.getpid()}@" in line and " since 20" in line and schema in line
            assert "\n" not in line
            holder = await held_by(settings, configured_services.db_url)
            assert holder is not None and holder.description.startswith(f"citycard up {os.getpid()}@")
            other = make_settings(configured_services, schema + "x")  # another schema: its own lock
            await (await take_platform_lock(other, configured_services.db_url, "up", state_file=False)).release()
        finally:
            await first.release()
        assert await held_by(settings, configured_services.db_url) is None
        again = await take_platform_lock(settings, configured_services.db_url, "up", state_file=False)
        await again.release()

    asyncio.run(run())


def test_state_dir_flock_names_the_holder(configured_services, schema, tmp_path):
    settings = make_settings(configured_services, schema, state={"dir": str(tmp_path)})

    async def run() -> None:
        first = await take_platform_lock(settings, configured_services.db_url, "up", state_file=True)
        try:
            with pytest.raises(PlatformLocked) as refused:
                await take_platform_lock(settings, configured_services.db_url, "loadtest", state_file=True)
            assert f"platform.{schema}.lock is locked by another platform: citycard up {os.getpid()}@" \
                in str(refused.value)
        finally:
            await first.release()

    asyncio.run(run())


def test_a_terminated_lock_session_is_reacquired(configured_services, schema):
    settings = make_settings(configured_services, schema)

    async def run() -> None:
        lock = await take_platform_lock(settings, configured_services.db_url, "up", state_file=False)
        lock.check_interval_s = 0.2
        lost: list[str] = []
        lock.watch(on_lost=lost.append)
        try:
            holder = await held_by(settings, configured_services.db_url)
            await _terminate(configured_services.db_url, holder.backend_pid)
            assert await _until(lambda: lock.reacquired == 1, 10.0), "lost lock not re-acquired"
            again = await held_by(settings, configured_services.db_url)
            assert again is not None and again.backend_pid != holder.backend_pid
            assert again.description == holder.description and not lost
        finally:
            await lock.release()

    asyncio.run(run())


def test_a_lock_taken_by_another_while_lost_stops_the_holder(configured_services, schema):
    settings = make_settings(configured_services, schema)

    async def run() -> None:
        lock = await take_platform_lock(settings, configured_services.db_url, "up", state_file=False)
        lock.check_interval_s = 1.0
        lost: list[str] = []
        lock.watch(on_lost=lost.append)
        thief = None
        try:
            holder = await held_by(settings, configured_services.db_url)
            await _terminate(configured_services.db_url, holder.backend_pid)
            thief = await take_platform_lock(settings, configured_services.db_url, "demo", state_file=False)
            assert await _until(lambda: bool(lost), 10.0), "lost lock not reported"
            assert lock.lost == lost[0] and "another platform took it" in lost[0] and "citycard demo" in lost[0]
        finally:
            await lock.release()
            if thief is not None:
                await thief.release()

    asyncio.run(run())


def test_lock_lost_for_good_stops_the_holder(configured_services, schema):
    settings = make_settings(configured_services, schema)

    async def run() -> None:
        lock = await take_platform_lock(settings, configured_services.db_url, "up", state_file=False)
        lock.check_interval_s, lock.reacquire_window_s = 0.2, 1.0
        lock.db_url = "postgresql://postgres@127.0.0.1:1/test"  # Postgres gone: nothing answers there
        lost: list[str] = []
        lock.watch(on_lost=lost.append)
        try:
            holder = await held_by(settings, configured_services.db_url)
            await _terminate(configured_services.db_url, holder.backend_pid)
            assert await _until(lambda: bool(lost), 10.0), "lost lock not reported"
            assert "could not be re-acquired within 1 s" in lost[0]
        finally:
            await lock.release()

    asyncio.run(run())


def test_a_command_run_under_the_lock_is_stopped_when_the_lock_is_lost(configured_services, schema, monkeypatch):
    """demo and loadtest run under ``locked()``: losing the lock to another platform stops the run."""
    from types import SimpleNamespace

    from citycard.cli import lifecycle

    settings = make_settings(configured_services, schema)
    real_take = lifecycle.take_platform_lock

    async def take_fast(*args, **kwargs):
        lock = await real_take(*args, **kwargs)
        lock.check_interval_s = 0.2
        return lock

    monkeypatch.setattr(lifecycle, "take_platform_lock", take_fast)
    monkeypatch.setattr(lifecycle, "guard_local_ray", lambda *_args: None)  # no Ray here: the lock is the point
    services = SimpleNamespace(db_url=configured_services.db_url, embedded=None)
    cancelled: list[bool] = []

    async def long_run() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "ran on"

    async def run() -> None:
        thief = None

        async def steal() -> None:
            nonlocal thief
            holder = None
            while holder is None:
                await asyncio.sleep(0.05)
                holder = await held_by(settings, configured_services.db_url)
            await _terminate(configured_services.db_url, holder.backend_pid)
            thief = await take_platform_lock(settings, configured_services.db_url, "up", state_file=False)

        stealer = asyncio.create_task(steal())
        t0 = asyncio.get_running_loop().time()
        try:
            with pytest.raises(lifecycle.PlatformLockLost) as stopped:
                await lifecycle.locked(settings, services, "demo", long_run())
            assert asyncio.get_running_loop().time() - t0 < 10 and cancelled == [True]
            line = str(stopped.value)
            assert line.startswith("citycard demo: lost the platform lock") and "another platform took it" in line
            assert "\n" not in line
        finally:
            await stealer
            if thief is not None:
                await thief.release()

    asyncio.run(run())


def test_a_run_under_the_lock_leaves_a_ray_this_process_already_runs(configured_services, schema, monkeypatch):
    """locked() in a process that already runs Ray (the test suite, an embedding program) neither
    guards nor shuts down that Ray: its owner's actors live on (the suite lost its Ray to this once)."""
    from types import SimpleNamespace

    from citycard.cli import lifecycle

    calls: list[str] = []
    monkeypatch.setattr(lifecycle.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(lifecycle.ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(lifecycle, "guard_local_ray", lambda *_args: calls.append("guard"))
    settings = make_settings(configured_services, schema)
    services = SimpleNamespace(db_url=configured_services.db_url, embedded=None)

    async def quick() -> str:
        return "done"

    assert asyncio.run(lifecycle.locked(settings, services, "demo", quick())) == "done"
    assert calls == []
