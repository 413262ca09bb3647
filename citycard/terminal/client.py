"""A small asyncio terminal client over ``protocols.client.ClientConnection``: connects and
authenticates, pipelines taps, and hands each answer to the future of what it answers.

It reads in the transport's callback (an asyncio Protocol), not in a task per connection: the
load lab runs thousands of these in one process, and a task woken per answer was a fifth of
the generator's time."""

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..domain.offline import OfflineRecord
from ..errors import CityCardError
from ..protocols import messages as m
from ..protocols.auth import terminal_key
from ..protocols.client import (
    Authenticated,
    BatchAnswered,
    Challenged,
    ClientConnection,
    ErrorReceived,
    Event,
    OfflineAnswered,
    ParamsReceived,
    PongReceived,
    TapAnswered,
    Violation,
)
from ..protocols.frames import DEFAULT_MAX_FRAME_BYTES
from ..protocols.offline import items_of

log = logging.getLogger(__name__)
CONTROL_QUEUE_MAX = 1_000  # unclaimed control messages kept; the oldest go first
CONNECT_TIMEOUT_S = 10.0


class ServerError(CityCardError):
    """The server answered with an ``error`` frame."""

    def __init__(self, error: m.Error) -> None:
        super().__init__(f"server error {error.code}: {error.message}")
        self.error = error


class TerminalClient:
    def __init__(self, terminal_id: int, master_key: bytes,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.terminal_id = terminal_id
        self.key = terminal_key(master_key, terminal_id)
        self.conn = ClientConnection(terminal_id, self.key, max_frame_bytes)
        self.auth_ok: m.AuthOk | None = None
        self.closed_error: BaseException | None = None
        self.violations: deque[Violation] = deque(maxlen=20)  # the server's latest, for tests
        self._transport: asyncio.Transport | None = None
        self._lost: asyncio.Future[None] | None = None  # resolved once the transport is gone
        self._can_write: asyncio.Future[None] | None = None  # set while the kernel's buffer is full
        self._ready: asyncio.Future[m.AuthOk] | None = None
        self._by_req: dict[int, asyncio.Future[m.Results]] = {}
        self._uploads: dict[int, asyncio.Future[m.OfflineAck]] = {}
        self._by_seq: dict[int, list[asyncio.Future[m.Result]]] = {}
        self._pongs: dict[int, list[asyncio.Future[m.Pong]]] = {}
        self._params: deque[asyncio.Future[m.Params]] = deque()
        self._control: asyncio.Queue[Any] = asyncio.Queue(CONTROL_QUEUE_MAX)

    async def connect(self, host: str, port: int, nonce: bytes | None = None,
                      timeout_s: float = CONNECT_TIMEOUT_S) -> m.AuthOk:
        """Open, hello, answer the challenge; the ``auth_ok``, or ``ServerError`` if refused."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            self._ready = loop.create_future()
            self._lost = loop.create_future()
            await loop.create_connection(lambda: _Link(self), host, port)
            self.send_raw(self.conn.hello(nonce or os.urandom(m.NONCE_BYTES)))
            self.auth_ok = await self._ready
        return self.auth_ok

    # -- sending --------------------------------------------------------------------------
    def send(self, msg: m.ClientMessage) -> None:
        """Any terminal message; its answer is matched like those of the methods below."""
        self._check_open()
        self._write(self.conn.send(msg))

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are, past the protocol's checks (tests of the server)."""
        self._check_open()
        self._write(self.conn.send_raw(data))

    async def tap(self, seq: int, card: int, time_ms: int, kind: int, route: int = 0,
                  amount_fen: int = 0, bill_class: int = 0) -> m.Result:
        self._check_open()
        frame = self.conn.tap(m.Tap(seq=seq, card=card, time_ms=time_ms, kind=kind, route=route,
                                    amount_fen=amount_fen, bill_class=bill_class))
        fut: asyncio.Future[m.Result] = asyncio.get_running_loop().create_future()
        self._by_seq.setdefault(seq, []).append(fut)
        self._write(frame)
        return await fut

    def send_taps(self, items: Sequence[m.TapItem]) -> "tuple[int, asyncio.Future[m.Results]]":
        """Send one ``taps`` batch; its ``req`` and the future of its ``results``."""
        self._check_open()
        req, frame = self.conn.taps(list(items))
        fut: asyncio.Future[m.Results] = asyncio.get_running_loop().create_future()
        self._by_req[req] = fut
        self._write(frame)
        return req, fut

    def taps_nowait(self, items: Sequence[m.TapItem]) -> "asyncio.Future[m.Results]":
        return self.send_taps(items)[1]

    async def taps(self, items: Sequence[m.TapItem]) -> m.Results:
        return await self.taps_nowait(items)

    async def upload(self, batch_seq: int, records: Sequence[OfflineRecord | m.OfflineRecordItem],
                     mac: bytes) -> m.OfflineAck:
        """Upload one batch of offline records (docs/protocol.md, section 15) signed by the
        SAM (``mac``: domain.offline.batch_mac with the terminal's batch key over this
        terminal's id, ``batch_seq`` and the records in order). Returns the ``offline_ack``:
        one ``codes.OfflineCode`` per record, all durable. Raises ``ServerError`` for an
        ``error`` naming the upload (BAD_BATCH_MAC: nothing journaled) and ConnectionError if
        the connection is lost before the answer (resend the same batch: replays are safe)."""
        self._check_open()
        frame = self.conn.upload(None, batch_seq, items_of(records), mac)
        fut: asyncio.Future[m.OfflineAck] = asyncio.get_running_loop().create_future()
        self._uploads[self.conn.last_req] = fut
        self._write(frame)
        return await fut

    async def ping(self, time_ms: int | None = None) -> m.Pong:
        """A heartbeat; ``time_ms`` defaults to this machine's clock."""
        self._check_open()
        now_ms = int(time.time() * 1000) if time_ms is None else time_ms
        frame = self.conn.ping(now_ms)
        fut: asyncio.Future[m.Pong] = asyncio.get_running_loop().create_future()
        self._pongs.setdefault(now_ms, []).append(fut)
        self._write(frame)
        return await fut

    async def params(self, fare_version: int = 0, hotlist_version: int = 0, fares: bool = False) -> m.Params:
        """The versions in force and the hotlist's changes since ``hotlist_version``; with
        ``fares``, the fare table's text too when ``fare_version`` is not the one in force."""
        self._check_open()
        frame = self.conn.params(fare_version, hotlist_version, fares)
        fut: asyncio.Future[m.Params] = asyncio.get_running_loop().create_future()
        self._params.append(fut)
        self._write(frame)
        return await fut

    async def next_control(self, timeout_s: float = 10.0) -> Any:
        """The next message no request of this client claimed (a pong or params_info for a
        ``send``, an error naming no request) or, once the connection is lost, an error."""
        async with asyncio.timeout(timeout_s):
            return await self._control.get()

    async def drain(self) -> None:
        if self._can_write is not None:
            await asyncio.shield(self._can_write)

    def _check_open(self) -> None:
        if self._transport is None:
            raise ConnectionError("not connected")
        if self.closed_error is not None or self._transport.is_closing() or self.conn.closed:
            raise ConnectionError(f"connection lost: {self.closed_error!r}")

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    # -- receiving ------------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        if self.closed_error is not None:
            return
        try:
            for event in self.conn.receive_data(data):
                self._dispatch(event)
        except Exception as exc:  # noqa: BLE001 - everything waiting learns of it
            self._broken(exc)
            if self._transport is not None:
                self._transport.close()

    def _broken(self, exc: BaseException) -> None:
        if self.closed_error is not None:
            return
        self.closed_error = exc
        self.conn.close()
        self._fail_all(ConnectionError(f"connection lost: {exc!r}"))
        self._put_control(m.Error(code=0, message=repr(exc)))

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, BatchAnswered):
            _settle(self._by_req.pop(event.results.req, None), event.results)
        elif isinstance(event, OfflineAnswered):
            _settle(self._uploads.pop(event.ack.req, None), event.ack)
        elif isinstance(event, TapAnswered):
            _settle(_first(self._by_seq, event.result.seq), event.result)
        elif isinstance(event, PongReceived):
            self._claim(_first(self._pongs, event.pong.time_ms), event.pong)
        elif isinstance(event, ParamsReceived):
            self._claim(self._params.popleft() if self._params else None, event.params)
        elif isinstance(event, ErrorReceived):
            self._on_error(event)
        elif isinstance(event, Challenged):
            self._write(self.conn.auth())
        elif isinstance(event, Authenticated):
            _settle(self._ready, event.auth_ok)
        else:
            self._on_violation(event)

    def _on_error(self, event: ErrorReceived) -> None:
        error = ServerError(event.error)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)  # refused at authentication: connect raises it
            return
        if event.req:
            _fail(self._by_req.pop(event.req, None), error)
            _fail(self._uploads.pop(event.req, None), error)
        if event.seq:
            _fail(_first(self._by_seq, event.seq), error)
        if event.fatal:
            self._fail_all(ConnectionError(f"connection lost: {error}"))
        if event.fatal or not (event.req or event.seq):
            self._put_control(event.error)

    def _on_violation(self, event: Violation) -> None:
        self.violations.append(event)
        log.warning("terminal %d: server broke the protocol: %s", self.terminal_id, event.message)
        if event.fatal:
            raise ConnectionError(f"server broke the protocol: {event.message}")

    def _claim(self, fut: "asyncio.Future[Any] | None", msg: Any) -> None:
        if fut is not None and not fut.done():
            fut.set_result(msg)
        else:
            self._put_control(msg)

    def _put_control(self, msg: Any) -> None:
        if self._control.full():
            self._control.get_nowait()
        self._control.put_nowait(msg)

    def _fail_all(self, exc: BaseException) -> None:
        waiting: list[asyncio.Future[Any]] = [*self._by_req.values(), *self._uploads.values(), *self._params]
        for seq_group in self._by_seq.values():
            waiting += seq_group
        for pong_group in self._pongs.values():
            waiting += pong_group
        if self._ready is not None:
            waiting.append(self._ready)
        for fut in waiting:
            _fail(fut, exc)
        self._by_req.clear()
        self._uploads.clear()
        self._by_seq.clear()
        self._pongs.clear()
        self._params.clear()

    async def close(self) -> None:
        self.conn.close()
        if self._transport is not None:
            self._transport.close()
        if self._lost is not None:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await asyncio.shield(self._lost)
            except TimeoutError:
                if self._transport is not None:
                    self._transport.abort()


class _Link(asyncio.Protocol):
    """The transport's callbacks, handed to the client."""

    def __init__(self, client: TerminalClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client._received(data)

    def eof_received(self) -> bool:
        self.client._broken(ConnectionError("server closed the connection"))
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        c = self.client
        c._broken(exc or ConnectionError("server closed the connection"))
        if c._can_write is not None and not c._can_write.done():
            c._can_write.set_result(None)
        if c._lost is not None and not c._lost.done():
            c._lost.set_result(None)

    def pause_writing(self) -> None:
        self.client._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        c = self.client
        if c._can_write is not None and not c._can_write.done():
            c._can_write.set_result(None)
        c._can_write = None


def _first(waiters: "dict[int, list[asyncio.Future[Any]]]", key: int) -> "asyncio.Future[Any] | None":
    group = waiters.get(key)
    if not group:
        return None
    fut = group.pop(0)
    if not group:
        del waiters[key]
    return fut


def _settle(fut: "asyncio.Future[Any] | None", value: Any) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)


def _fail(fut: "asyncio.Future[Any] | None", exc: BaseException) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(exc)
