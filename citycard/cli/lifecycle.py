"""A platform's lifecycle guards, for every command that runs a platform of its own: the
schema's platform lock, and the watch on its local Ray session (docs/reliability.md, section 8)."""

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import ray

from ..config.settings import Settings
from ..errors import CityCardError
from ..persistence.platform_lock import take_platform_lock
from .ray_watchdog import RayGuard, reap_dead_session
from .services import Services, init_ray, local_ray_session_dir

log = logging.getLogger(__name__)
T = TypeVar("T")


class PlatformLockLost(CityCardError):
    """The run was stopped: its platform lock could not be kept (the message says why)."""


def guard_local_ray(settings: Settings, services: Services, command: str) -> RayGuard | None:
    """Reap a dead run's Ray session, start this run's local Ray, and watch it: a kill -9 of this
    process stops the session (and the embedded servers it owns) within seconds. None on a cluster."""
    if settings.ray.on_cluster:  # joined to a cluster: its processes are not ours
        return None
    state = settings.state.path
    record = state / f"ray-session.{settings.database.schema}.json"
    if reap_dead_session(record):
        log.warning("stopped the Ray processes left by a dead run (%s)", record)
    init_ray(settings)
    session_dir = local_ray_session_dir()
    if session_dir is None:
        return None
    return RayGuard.start(session_dir, record, command, state if services.embedded else None)


def stop_local_ray(guard: RayGuard | None) -> None:
    """ray.shutdown(), then whatever of the session outlived it."""
    if ray.is_initialized():
        ray.shutdown()
    if guard is not None:
        guard.close()


async def locked(settings: Settings, services: Services, command: str, run: Coroutine[Any, Any, T]) -> T:
    """``run`` while holding the schema's platform lock (PlatformLocked, one line, if another
    holds it), its local Ray watched and, at the end, stopped. A lock lost on the way (and not
    re-acquired) cancels ``run``: PlatformLockLost, one line."""
    try:
        lock = await take_platform_lock(settings, services.db_url, command, state_file=bool(services.embedded))
    except BaseException:
        run.close()  # never started: no "coroutine was never awaited" warning
        raise
    guard = None
    # A Ray this process already runs (an embedding program, the test suite's) is not this run's:
    # neither guarded nor shut down at the end, or its owner's actors and sessions die with it.
    ray_was_up = ray.is_initialized()
    try:
        try:
            guard = None if ray_was_up else guard_local_ray(settings, services, command)
        except BaseException:
            run.close()
            raise
        if guard is not None:
            guard.note_processes()
        task = asyncio.ensure_future(run)
        lock.watch(on_lost=lambda _why: task.cancel())  # never run on without the lock
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if lock.lost is not None and (current is None or not current.cancelling()):
                raise PlatformLockLost(f"citycard {command}: {lock.lost}; stopped") from None
            raise
    finally:
        if not ray_was_up:
            stop_local_ray(guard)
        await lock.release()
