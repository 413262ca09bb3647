"""Cuts a disabled terminal off now: the gateway hears disables on Redis and closes that
terminal's open connections with TERMINAL_DISABLED (its next authentication is refused by
the session actor, which re-reads the flag).

Postgres is the record (persistence/terminals.py). A Redis message can be lost (we were
reconnecting, Redis restarted), so after each (re)subscription and every ``check_interval_s``
the gateway also asks Postgres which of its connected terminals are disabled.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from ..keys import disabled_terminals_channel as channel
from ..protocols.codes import ErrorCode
from ..tasks import cancel_and_wait
from .context import GatewayContext
from .metrics import Metrics

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0  # Redis away for long: retry this often, no faster
CHECK_TIMEOUT_S = 5.0  # one look at Postgres; a slow one is given up and retried next time
START_WAIT_S = 5.0  # start() waits this long for the first subscription, then goes on without
TERMINAL_ID_MAX = 2**31 - 1  # the protocol's and the terminals table's range


def parse_terminal_id(data: bytes | str) -> int | None:
    """The terminal id a message names; None for anything else (ignored: never fatal)."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    if not (0 < len(text) <= 10 and text.isascii() and text.isdigit()):
        return None
    terminal_id = int(text)
    return terminal_id if 1 <= terminal_id <= TERMINAL_ID_MAX else None


def next_backoff_s(delay_s: float) -> float:
    return min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, delay_s * 2))


class TerminalControl:
    """``disabled_among(ids)`` answers which of these terminal ids are disabled (Postgres)."""

    def __init__(
        self,
        ctx: GatewayContext,
        redis: aioredis.Redis,
        prefix: str,
        disabled_among: Callable[[list[int]], Awaitable[list[int]]],
        metrics: Metrics,
        *,
        check_interval_s: float,
    ) -> None:
        self._ctx = ctx
        self._redis = redis
        self._channel = channel(prefix)
        self._disabled_among = disabled_among
        self._metrics = metrics
        self._check_interval_s = check_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()  # subscribed now; cleared while reconnecting

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen())]
        if self._check_interval_s > 0:
            self._tasks.append(loop.create_task(self._check_loop()))
        try:
            async with asyncio.timeout(START_WAIT_S):
                await self.listening.wait()
        except TimeoutError:
            log.warning("terminal control: not subscribed after %.0f s; still trying", START_WAIT_S)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    def cut_off(self, terminal_id: int, via: str) -> int:
        """Close this terminal's connections here; returns how many."""
        n = self._ctx.disconnect_terminal(
            terminal_id, ErrorCode.TERMINAL_DISABLED, f"terminal {terminal_id} is disabled")
        if n:
            self._metrics.terminal_cutoffs.labels(via).inc(n)
            log.warning("terminal %s disabled: closed %d connection(s) (%s)", terminal_id, n, via)
        return n

    async def check(self) -> int:
        """Cut off every connected terminal Postgres says is disabled; returns connections closed."""
        ids = {c.conn.terminal_id for c in self._ctx.connections if c.conn.terminal_id and not c.conn.closed}
        if not ids:
            return 0
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            disabled = await self._disabled_among(sorted(ids))
        return sum(self.cut_off(t, "check") for t in disabled)

    async def _check_logged(self) -> None:
        try:
            await self.check()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Postgres slow or away: the next check retries
            log.warning("terminal control: check failed: %r", exc)

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval_s)
            await self._check_logged()

    async def _listen(self) -> None:
        delay_s = BACKOFF_MIN_S
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self.listening.set()
                delay_s = BACKOFF_MIN_S
                await self._check_logged()  # what was disabled while we were not listening
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    terminal_id = parse_terminal_id(message["data"])
                    if terminal_id is None:
                        log.warning("terminal control: ignored message %.80r", message["data"])
                        continue
                    self.cut_off(terminal_id, "event")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away: reconnect; checks cover the gap
                log.warning("terminal control: subscription lost, retry in %.1f s: %r", delay_s, exc)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(BACKOFF_MAX_S):
                        await pubsub.aclose()
            await asyncio.sleep(delay_s)
            delay_s = next_backoff_s(delay_s)
