"""The gateway's terminal-control subscriber without services: message parsing, bounded
backoff, and that a lost subscription is made again and followed by a look at Postgres."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from citycard.gateway import terminal_control as tc
from citycard.gateway.metrics import Metrics
from citycard.protocols.codes import ErrorCode


@pytest.mark.parametrize(("data", "want"), [
    (b"42", 42), ("7", 7), (b"2147483647", 2**31 - 1),
    (b"0", None), (b"2147483648", None), (b"-1", None), (b"", None), (b"4 2", None),
    (b"\xff", None), ("\u0663", None), (b"1" * 11, None),  # a non-ASCII digit is no id
])
def test_parse_terminal_id(data: bytes | str, want: int | None) -> None:
    assert tc.parse_terminal_id(data) == want


def test_backoff_doubles_and_is_bounded() -> None:
    delays = [tc.BACKOFF_MIN_S]
    for _ in range(20):
        delays.append(tc.next_backoff_s(delays[-1]))
    assert delays[1] == 2 * tc.BACKOFF_MIN_S
    assert max(delays) == tc.BACKOFF_MAX_S == delays[-1]


class FakeConn:
    def __init__(self, terminal_id: int) -> None:
        self.terminal_id = terminal_id
        self.closed = False


class FakeProtocol:
    def __init__(self, terminal_id: int) -> None:
        self.conn = FakeConn(terminal_id)


class FakeContext:
    """GatewayContext's part TerminalControl uses."""

    def __init__(self, terminal_ids: list[int]) -> None:
        self.connections = {FakeProtocol(t) for t in terminal_ids}
        self.cut: list[tuple[int, ErrorCode]] = []

    def disconnect_terminal(self, terminal_id: int, code: ErrorCode, message: str) -> int:
        hit = [c for c in self.connections if c.conn.terminal_id == terminal_id and not c.conn.closed]
        for c in hit:
            c.conn.closed = True
            self.cut.append((terminal_id, code))
        return len(hit)


class FakePubSub:
    def __init__(self, redis: "FakeRedis") -> None:
        self.redis = redis

    async def subscribe(self, channel: str) -> None:
        self.redis.subscribes += 1
        if self.redis.subscribes == 1:
            raise ConnectionError("Redis is restarting")
        assert channel == "p:terminals:disabled"

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "subscribe", "data": 1}
        while True:
            yield {"type": "message", "data": await self.redis.messages.get()}

    async def aclose(self) -> None:
        self.redis.closed += 1


class FakeRedis:
    def __init__(self) -> None:
        self.subscribes = 0
        self.closed = 0
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()

    def pubsub(self) -> FakePubSub:
        return FakePubSub(self)


def test_a_lost_subscription_is_made_again_then_checked_and_messages_cut_off() -> None:
    async def go() -> None:
        ctx, redis, metrics = FakeContext([5, 6, 7, 7]), FakeRedis(), Metrics()
        asked: list[list[int]] = []

        async def disabled_among(ids: list[int]) -> list[int]:
            asked.append(ids)
            return [6]  # disabled while the gateway was not subscribed

        control = tc.TerminalControl(ctx, redis, "p", disabled_among, metrics,  # type: ignore[arg-type]
                                     check_interval_s=0)
        await control.start()  # the first subscribe fails; start waits for the retry
        try:
            assert redis.subscribes == 2 and redis.closed == 1 and control.listening.is_set()
            for _ in range(100):
                if ctx.cut:
                    break
                await asyncio.sleep(0.01)
            assert asked == [[5, 6, 7]] and ctx.cut == [(6, ErrorCode.TERMINAL_DISABLED)]
            redis.messages.put_nowait(b"garbage")
            redis.messages.put_nowait(b"7")
            for _ in range(100):
                if len(ctx.cut) == 3:
                    break
                await asyncio.sleep(0.01)
            assert ctx.cut[1:] == [(7, ErrorCode.TERMINAL_DISABLED)] * 2
            sample = metrics.registry.get_sample_value
            assert sample("citycard_terminal_cutoffs_total", {"via": "check"}) == 1
            assert sample("citycard_terminal_cutoffs_total", {"via": "event"}) == 2
        finally:
            await control.stop()
        assert redis.closed == 2 and not control.listening.is_set()

    asyncio.run(asyncio.wait_for(go(), 10))
