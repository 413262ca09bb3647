"""Backpressure: once a shard queue passes ``shard_queue_pause_taps``, the gateway stops reading
terminals and holds the taps it has already decoded, instead of answering them BUSY; when every
queue is back under half the mark, the held taps go first and reading resumes. Real Router and
TerminalProtocol; the shard calls wait for the test to open their gates."""

import asyncio
from typing import Any

from citycard.domain.results import Result
from citycard.gateway.build import GatewayLimits, build_gateway
from citycard.gateway.metrics import Metrics
from citycard.gateway.router import STALL_S
from citycard.gateway.server import TerminalProtocol
from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key
from citycard.protocols.client import BatchAnswered, ClientConnection, PongReceived
from citycard.protocols.codes import ErrorCode
from tests.support.gated_shards import GatedShards, settle

KEY = bytes(32)


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.reading = True
        self.pauses = 0
        self.eof = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True


class _Session:
    class authenticate:  # noqa: N801 - shaped like a Ray actor method
        @staticmethod
        async def remote(*args: Any) -> tuple[int, str, int]:
            return 0, "", 0


class Terminal:
    def __init__(self, ctx: Any, terminal_id: int) -> None:
        self.client = ClientConnection(terminal_id, terminal_key(KEY, terminal_id))
        self.transport = _Transport()
        self.proto = TerminalProtocol(ctx)
        self.proto.connection_made(self.transport)  # type: ignore[arg-type]
        self.next_seq = 1
        self.answers: list[m.ResultItem] = []
        self.pongs = 0

    async def login(self) -> None:
        self.proto.data_received(self.client.hello(bytes(16)))
        self.read()
        self.proto.data_received(self.client.auth())
        await settle()
        self.read()

    def frame(self, n_taps: int) -> bytes:
        items = [m.TapItem(seq=self.next_seq + i, card=1001, time_ms=0, kind=1, route=12) for i in range(n_taps)]
        self.next_seq += n_taps
        return self.client.taps(items)[1]

    def send(self, n_taps: int) -> None:
        self.proto.data_received(self.frame(n_taps))

    def read(self) -> None:
        data, self.transport.out = bytes(self.transport.out), bytearray()
        for event in self.client.receive_data(data):
            if isinstance(event, BatchAnswered):
                self.answers.extend(event.results.results)
            elif isinstance(event, PongReceived):
                self.pongs += 1


def _limits(pause_taps: int, max_taps: int = 100) -> GatewayLimits:
    return GatewayLimits(shard_batch_max_taps=2, shard_inflight_calls=1, shard_queue_max_taps=max_taps, linger_ms=0,
                         max_frame_bytes=65536, max_batch_taps=1000, auth_timeout_ms=10_000, heartbeat_ms=30_000,
                         shard_queue_pause_taps=pause_taps, seq_memory_per_terminal=0)


async def _gateway(limits: GatewayLimits, n_terminals: int = 2) -> tuple[GatedShards, Any, list[Terminal]]:
    """Gated shards, the gateway's parts built as in production, and terminals 7, 8, ... logged in."""
    shards = GatedShards()
    parts = build_gateway(shards, [_Session()], set, Metrics(), limits,  # type: ignore[arg-type]
                          fare_version=lambda: 1, hotlist_version=lambda: 0)
    terminals = [Terminal(parts.ctx, 7 + i) for i in range(n_terminals)]
    for t in terminals:
        await t.login()
    return shards, parts, terminals


async def _open_all(shards: GatedShards, terminals: list[Terminal], rounds: int = 50) -> None:
    for _ in range(rounds):  # bounded: each round opens every gate waiting
        for gate in shards.gates:
            gate.set()
        await settle()
        for t in terminals:
            t.read()


def test_a_full_queue_stops_reading_and_holds_taps_instead_of_busy() -> None:
    async def go() -> None:
        shards, parts, (a, b) = await _gateway(_limits(pause_taps=4))
        router, ctx, metrics = parts.router, parts.ctx, parts.ctx.metrics
        a.send(6)  # 2 go to the shard, 4 queue: the mark
        await settle()
        assert router.pressed and shards.calls == [2]
        assert metrics.backpressure._value.get() == 1
        a.send(3)
        b.send(5)
        assert not a.transport.reading and not b.transport.reading  # TCP holds what they send next
        assert list(ctx.paused) == [a.proto, b.proto]  # resumed in this order
        assert metrics.paused_connections._value.get() == 2
        assert len(router.lanes[0].queue) == 4  # the held taps are not queued ...
        a.read()
        b.read()
        assert not a.answers and not b.answers  # ... nor answered BUSY

        shards.gates[0].set()  # 2 decided, 2 more called, 2 queued: half the mark, released
        await settle()
        # a went first: its 3 held taps queued (5: pressed again), so b holds once more
        assert router.pressed and list(ctx.paused) == [b.proto]
        assert a.transport.reading and not b.transport.reading
        await _open_all(shards, [a, b])
        assert sorted(r.seq for r in a.answers) == list(range(1, 10))
        assert sorted(r.seq for r in b.answers) == list(range(1, 6))
        assert all(r.code == Result.OK for r in a.answers + b.answers)
        assert metrics.busy._value.get() == 0
        assert not router.pressed and not ctx.paused
        assert a.transport.reading and b.transport.reading
        assert metrics.backpressure._value.get() == 0 and metrics.paused_connections._value.get() == 0
        assert metrics.backpressure_episodes._value.get() >= 2  # pressed again by the held taps
        await router.close()

    asyncio.run(go())


def test_no_mark_means_busy_at_the_queue_bound() -> None:
    async def go() -> None:
        shards, parts, (a,) = await _gateway(_limits(pause_taps=0, max_taps=4), n_terminals=1)
        a.send(9)  # 4 queued (the call goes out after), 5 BUSY
        await settle()
        assert a.transport.reading and not parts.router.pressed
        await _open_all(shards, [a])
        codes = sorted(r.code for r in a.answers)
        assert codes.count(Result.BUSY) == 5 and codes.count(Result.OK) == 4
        await parts.router.close()

    asyncio.run(go())


def test_a_connection_that_goes_while_held_leaves_the_paused_set() -> None:
    async def go() -> None:
        shards, parts, (a, b) = await _gateway(_limits(pause_taps=2))
        a.send(4)
        b.send(1)
        assert list(parts.ctx.paused) == [b.proto]
        b.proto.connection_lost(None)  # its held tap was never answered: the terminal resends it
        assert not parts.ctx.paused
        await _open_all(shards, [a, b])
        assert sorted(r.seq for r in a.answers) == [1, 2, 3, 4] and not b.answers
        assert shards.calls == [2, 2]  # b's tap never reached a shard
        await parts.router.close()

    asyncio.run(go())


def test_what_follows_held_taps_in_the_same_read_waits_with_them() -> None:
    async def go() -> None:
        shards, parts, (a, b) = await _gateway(_limits(pause_taps=2))
        a.send(4)  # pressed
        await settle()
        b.proto.data_received(b.frame(1) + b.client.ping(123) + b.frame(2))  # one read, three frames
        b.read()
        assert b.pongs == 0 and list(parts.ctx.paused) == [b.proto]
        await _open_all(shards, [a, b])
        assert b.pongs == 1 and sorted(r.seq for r in b.answers) == [1, 2, 3]
        assert b.transport.reading and not parts.ctx.paused
        await parts.router.close()

    asyncio.run(go())


class _Clock:
    """The running loop with a clock the test moves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.offset_s = 0.0

    def time(self) -> float:
        return self._loop.time() + self.offset_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


def test_a_shard_that_stops_answering_releases_the_terminals_and_does_not_press() -> None:
    """A failing shard is not a busy one: holding every terminal for it would stop the taps of
    the other shards too. Its taps queue to the BUSY bound instead."""
    async def go() -> None:
        shards, parts, (a, b) = await _gateway(_limits(pause_taps=2, max_taps=6))
        router, ctx = parts.router, parts.ctx
        clock = router._loop = _Clock(asyncio.get_running_loop())  # type: ignore[assignment]
        a.send(4)  # 2 called, 2 queued: pressed, the shard not yet known to fail
        await settle()
        b.send(3)
        assert router.pressed and list(ctx.paused) == [b.proto]
        clock.offset_s = STALL_S + 0.1  # no call answered since
        router._stall_check()
        assert not router.pressed and b.transport.reading and not ctx.paused  # released
        assert len(router.lanes[0].queue) == 5  # b's held 3 went in: over the mark, no press
        b.send(3)  # 1 more to the bound of 6, then BUSY
        await settle()
        assert not router.pressed and len(router.lanes[0].queue) == 6
        await _open_all(shards, [a, b])  # the shard answers again
        assert sorted(r.seq for r in a.answers) == [1, 2, 3, 4]
        assert sorted(r.seq for r in b.answers) == [1, 2, 3, 4, 5, 6]
        assert [r.code for r in b.answers].count(Result.BUSY) == 2
        assert parts.ctx.metrics.backpressure_episodes._value.get() == 1
        await router.close()

    asyncio.run(go())


def test_a_held_connection_closed_with_an_error_drains_instead_of_staying_paused() -> None:
    """Its error frame is followed by our FIN, and what the terminal still sends must be read
    (and dropped) until it closes: unread bytes would make the kernel reset the connection and
    the terminal lose the error."""
    async def go() -> None:
        shards, parts, (a, b) = await _gateway(_limits(pause_taps=2))
        a.send(4)
        b.send(1)
        assert not b.transport.reading and list(parts.ctx.paused) == [b.proto]
        assert parts.ctx.disconnect_terminal(8, ErrorCode.TERMINAL_DISABLED, "disabled") == 1
        assert b.transport.eof and b.transport.reading and not parts.ctx.paused
        assert parts.ctx.metrics.paused_connections._value.get() == 0
        await _open_all(shards, [a])
        assert shards.calls == [2, 2]  # b's held tap was dropped, never decided
        await parts.router.close()

    asyncio.run(go())
