"""A city polls its clearing house's ``GET /suspended`` (docs/interop.md, 5.1 and section 3):
the issuers over their net debit cap, whose cards this city's desk then refuses stand-in
(``RemoteDesk.set_suspended``). Each poll is bounded by a timeout; a failed poll keeps the
last known set (a house that cannot be reached suspends no one anew and lifts no one) and is
logged once, until a poll succeeds again. httpx, as clearing/client.py, but its async client:
that module's calls block and wait up to 120 s (deliveries), too long for a poll in the
platform's loop."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)
MAX_SUSPENDED = 10_000  # more codes than any registry holds: a wrong answer, not a set to keep


class PollMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_ok = Gauge("citycard_house_poll_last_ok_timestamp_seconds",
                             "Unix time of the last successful GET /suspended from the clearing house",
                             registry=registry)
        self.failures = Counter("citycard_house_poll_failures", "Polls of the clearing house that failed",
                                registry=registry)
        self.suspended = Gauge("citycard_house_suspended_issuers", "Issuers the clearing house suspends,"
                               " as last polled", registry=registry)


def parse_suspended(body: Any) -> list[str]:
    """The house's answer ``{"suspended": [code, ...]}``; anything else raises ValueError."""
    codes = body.get("suspended") if isinstance(body, dict) else None
    if not isinstance(codes, list) or len(codes) > MAX_SUSPENDED or not all(isinstance(c, str) for c in codes):
        raise ValueError(f"not a list of city codes: {str(body)[:200]}")
    return codes


class HousePoller:
    def __init__(self, url: str, poll_ms: int, timeout_ms: int, apply: Callable[[Iterable[str]], Any],
                 metrics: PollMetrics) -> None:
        self.url = url.rstrip("/") + "/suspended"
        self.poll_s = poll_ms / 1000.0
        self._timeout = httpx.Timeout(timeout_ms / 1000.0)
        self._apply = apply
        self.metrics = metrics
        self.last: frozenset[str] | None = None  # None: never polled successfully
        self.last_ok_at: float | None = None
        self._failing = False
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> bool:
        """One GET; True if it answered a set (applied to the desk), False if not (kept as was)."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout)
        try:
            r = await self._http.get(self.url)
            r.raise_for_status()
            codes = parse_suspended(r.json())
        except (httpx.HTTPError, ValueError) as exc:
            self.metrics.failures.inc()
            if not self._failing:
                log.warning("clearing house %s: %r; keeping the last known suspensions %s", self.url, exc,
                            sorted(self.last) if self.last is not None else "(none yet)")
            self._failing = True
            return False
        if self._failing:
            log.info("clearing house %s answers again", self.url)
        self._failing = False
        self.last = frozenset(codes)
        self._apply(self.last)
        self.last_ok_at = time.time()
        self.metrics.last_ok.set(self.last_ok_at)
        self.metrics.suspended.set(len(self.last))
        return True

    async def _run(self) -> None:
        while True:  # the first poll is the caller's (before the first tap), then one per interval
            await asyncio.sleep(self.poll_s)
            await self.poll_once()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="house-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None


__all__ = ["HousePoller", "PollMetrics", "parse_suspended"]
