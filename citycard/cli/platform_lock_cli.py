"""The platform lock around a command that runs a platform of its own (demo, the load lab)."""

from collections.abc import Coroutine
from typing import Any, TypeVar

from ..config.settings import Settings
from ..persistence.platform_lock import take_platform_lock
from .runtime import Services

T = TypeVar("T")


async def locked(settings: Settings, services: Services, command: str, run: Coroutine[Any, Any, T]) -> T:
    """``run`` while holding the schema's platform lock (PlatformLocked, one line, if another holds it)."""
    try:
        lock = await take_platform_lock(settings, services.db_url, command, state_file=bool(services.embedded))
    except BaseException:
        run.close()  # never started: no "coroutine was never awaited" warning
        raise
    try:
        return await run
    finally:
        await lock.release()
