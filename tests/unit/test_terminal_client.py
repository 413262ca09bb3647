"""The asyncio TerminalClient against ServerConnection served on 127.0.0.1 (the in-memory shell
of tests/support/protocol_pair.py): every answer reaches the future of what it answers."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from citycard.protocols import messages as m
from citycard.protocols.codes import ErrorCode
from citycard.protocols.connection import State, TapsReceived
from citycard.terminal.client import ServerError, TerminalClient
from tests.support.protocol_pair import (
    AUTH_OK,
    MASTER_KEY,
    NOW_MS,
    TERMINAL_ID,
    Server,
    frame,
    item,
)

pytestmark = pytest.mark.timeout(30)
BOUND_S = 5.0


@asynccontextmanager
async def served(shell: Callable[[], Server] = Server) -> AsyncIterator[tuple[int, list[Server]]]:
    """A port where each connection is answered by a fresh ``shell``; the shells, as made."""
    shells: list[Server] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = shell()
        shells.append(server)
        try:
            while data := await reader.read(65536):
                writer.write(server.feed(data))
                if server.conn.closed:
                    break
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], shells
    finally:
        srv.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(BOUND_S * 4):
            await scenario()

    asyncio.run(bounded())


def test_requests_are_answered_through_their_futures() -> None:
    async def scenario() -> None:
        async with served() as (port, _):
            client = TerminalClient(TERMINAL_ID, MASTER_KEY)
            try:
                assert await client.connect("127.0.0.1", port) == AUTH_OK == client.auth_ok
                batch = client.taps_nowait([item(2), item(3)])
                single = await client.tap(1, 5, NOW_MS, 1, route=42)
                assert (single.seq, single.code) == (1, 0)
                assert [r.seq for r in (await batch).results] == [2, 3]
                assert (await client.ping(NOW_MS)).time_ms == NOW_MS
                assert (await client.params(1, 1)).hotlist_added == [7]
                client.send(m.ParamsRequest())  # not claimed by a waiter: a control message
                assert isinstance(await client.next_control(BOUND_S), m.Params)
                client.send_raw(frame(m.Ping(time_ms=9)) * 2)
                assert [(await client.next_control(BOUND_S)).time_ms for _ in range(2)] == [9, 9]
                assert client.conn.pending == 0 and not client.violations
            finally:
                await client.close()

    run(scenario)


def test_an_error_naming_a_batch_fails_that_batch_only() -> None:
    async def scenario() -> None:
        async with served() as (port, shells):
            client = TerminalClient(TERMINAL_ID, MASTER_KEY)
            try:
                await client.connect("127.0.0.1", port)
                shells[0].fail_reqs.add(1)
                failed, fine = client.taps_nowait([item(1)]), client.taps_nowait([item(2)])
                with pytest.raises(ServerError) as err:
                    await failed
                assert err.value.error.code == ErrorCode.INTERNAL and err.value.error.req == 1
                assert (await fine).req == 2
            finally:
                await client.close()

    run(scenario)


def test_a_wrong_key_is_refused_at_connect() -> None:
    async def scenario() -> None:
        async with served() as (port, _):
            client = TerminalClient(TERMINAL_ID, b"\x99" * 32)
            try:
                with pytest.raises(ServerError) as err:
                    await client.connect("127.0.0.1", port)
                assert err.value.error.code == ErrorCode.AUTH_FAILED
            finally:
                await client.close()

    run(scenario)


class Disabling(Server):
    """Cuts the terminal off (a fatal TERMINAL_DISABLED) instead of answering its second tap."""

    def feed(self, data: bytes) -> bytes:
        if self.conn.state is State.READY and any(isinstance(e, TapsReceived) for e in self.seen):
            self.conn.receive_data(data)
            return self.conn.reject(ErrorCode.TERMINAL_DISABLED, "disabled by the operator")
        return super().feed(data)


def test_a_fatal_error_fails_what_is_outstanding_and_closes() -> None:
    async def scenario() -> None:
        async with served(Disabling) as (port, _):
            client = TerminalClient(TERMINAL_ID, MASTER_KEY)
            try:
                await client.connect("127.0.0.1", port)
                assert (await client.tap(1, 5, NOW_MS, 1, route=42)).code == 0
                with pytest.raises(ConnectionError):
                    await client.tap(2, 5, NOW_MS, 1, route=42)
                error = await client.next_control(BOUND_S)
                assert isinstance(error, m.Error) and error.code == ErrorCode.TERMINAL_DISABLED
                with pytest.raises(ConnectionError):
                    client.send_taps([item(3)])
            finally:
                await client.close()

    run(scenario)
