"""The gateway's connection protocol leaves no timer behind when its connection goes: the
30 s "answers owed" timer of a fatal error was kept in the drain timer's field, so a close
after it (_close_after_error) overwrote it and connection_lost could not cancel it (review
finding, issue 16): the protocol object lived on for OWED_MAX_S. Today's callers of that
close skip a connection already closed by a fatal error (disconnect_terminal does, see below),
so the test calls it directly: the hazard was latent, one new caller away."""

import asyncio
from types import SimpleNamespace
from typing import Any

from citycard.gateway.context import GatewayContext
from citycard.gateway.metrics import Metrics
from citycard.gateway.server import OWED_MAX_S, TerminalProtocol
from citycard.protocols import messages as m
from citycard.protocols.codes import ErrorCode
from tests.support.terminal import encode as frame

TID = 77


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False
        self.eof = False

    def write(self, data: bytes) -> None:
        self.out += data

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class _Remote:
    """An actor method whose call never answers (a session shard that hangs)."""

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        return self.fut


class _Session:
    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.authenticate = _Remote(fut)


class _Loop:
    """The running loop, recording each timer it sets."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.timers: list[tuple[float, asyncio.TimerHandle]] = []

    def call_later(self, delay: float, cb: Any, *args: Any) -> asyncio.TimerHandle:
        h = self._loop.call_later(delay, cb, *args)
        self.timers.append((delay, h))
        return h

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


def test_connection_lost_cancels_the_owed_timer_after_a_disconnect() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[Any] = loop.create_future()
        router = SimpleNamespace(pressed=False, on_pressure=None)  # no tap is sent here
        ctx = GatewayContext(router, [_Session(never)], None, Metrics(),  # type: ignore[arg-type]
                             max_frame_bytes=65536, max_batch_taps=1000, auth_timeout_ms=10_000,
                             heartbeat_ms=30_000, fare_version=lambda: 1, hotlist_version=lambda: 1)
        p = TerminalProtocol(ctx)
        clock = p._loop = _Loop(loop)  # type: ignore[assignment]
        t = _Transport()
        p.connection_made(t)  # type: ignore[arg-type]
        p.data_received(frame(m.Hello(terminal_id=TID, nonce=b"\x02" * 16)))
        # auth (its check hangs: an answer owed), then a zero-length frame: fatal, held back
        p.data_received(frame(m.Auth(mac=b"\x00" * 32)) + b"\x00\x00\x00\x00")
        assert any(d == OWED_MAX_S for d, _ in clock.timers)
        assert ctx.disconnect_terminal(TID, ErrorCode.TERMINAL_DISABLED, "disabled") == 0  # closed already
        p._close_after_error()  # what a close by another path does (FIN, then the drain timer)
        assert t.eof
        p.connection_lost(None)
        left = [d for d, h in clock.timers if not h.cancelled()]
        assert left == [], f"timers still set after connection_lost: {left}"
        for task in list(ctx.tasks):
            task.cancel()
        await asyncio.gather(*ctx.tasks, return_exceptions=True)

    asyncio.run(go())
