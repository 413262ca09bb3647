"""An attached gateway's handle on a named actor another ``citycard up`` owns (docs/deploy.md).

When the first gateway restarts it kills its actors and creates new ones under the same names;
a handle looked up once stays dead. This handle, when a call finds the actor dead, looks the
name up again (at most once per ``relookup_interval_s``, each lookup bounded), so the next
attempt (ShardClient's retry, a terminal's next auth) reaches the new actor. The failed call
still fails: whether it was applied is the caller's to settle with the same ids, as ever.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError  # ActorDiedError, ActorUnavailableError

log = logging.getLogger(__name__)

RELOOKUP_INTERVAL_S = 1.0  # a dead owner means every call fails: one lookup a second per actor
LOOKUP_TIMEOUT_S = 2.0


class NamedActor:
    """Called like a Ray handle (``await h.method.remote(...)``); re-found by name when dead."""

    def __init__(self, name: str, handle: Any, lookup: Callable[[], Any], *,
                 relookup_interval_s: float = RELOOKUP_INTERVAL_S, lookup_timeout_s: float = LOOKUP_TIMEOUT_S) -> None:
        self.name, self.handle, self._lookup = name, handle, lookup
        self.relookup_interval_s, self.lookup_timeout_s = relookup_interval_s, lookup_timeout_s
        self.lookups = 0  # attempted re-lookups, for tests and logs
        self._last_lookup = float("-inf")
        self._lock = asyncio.Lock()

    def __getattr__(self, method: str) -> "_Method":
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self, method)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        handle = self.handle
        try:
            return await getattr(handle, method).remote(*args, **kwargs)
        except RayActorError:
            await self.relookup(handle)
            raise

    async def relookup(self, dead: Any) -> None:
        """Look the name up again unless another call just did (or already replaced ``dead``)."""
        async with self._lock:
            now = time.monotonic()
            if self.handle is not dead or now - self._last_lookup < self.relookup_interval_s:
                return
            self._last_lookup, self.lookups = now, self.lookups + 1
            try:
                async with asyncio.timeout(self.lookup_timeout_s):
                    fresh = await asyncio.to_thread(self._lookup)
            except (ValueError, TimeoutError) as exc:  # not there yet (the owner is restarting)
                log.info("actor %s: not found again yet (%r)", self.name, exc)
                return
            except Exception as exc:  # noqa: BLE001 - the GCS unreachable: try again next interval
                log.warning("actor %s: lookup failed: %r", self.name, exc)
                return
            if fresh is not None:
                self.handle = fresh
                log.warning("actor %s was gone; found it again by name", self.name)


class _Method:
    __slots__ = ("_actor", "_method")

    def __init__(self, actor: NamedActor, method: str) -> None:
        self._actor, self._method = actor, method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._actor.call(self._method, *args, **kwargs)
