"""A terminal client over the real protocol: authenticates, pipelines taps, matches answers."""

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from ..errors import CityCardError
from ..protocols import messages as m
from ..protocols.auth import auth_mac, terminal_key
from ..protocols.frames import FrameDecoder, encode_frame


class ServerError(CityCardError):
    def __init__(self, error: m.Error) -> None:
        super().__init__(f"server error {error.code}: {error.message}")
        self.error = error


class TerminalClient:
    def __init__(self, terminal_id: int, master_key: bytes) -> None:
        self.terminal_id = terminal_id
        self.key = terminal_key(master_key, terminal_id)
        self.auth_ok: m.AuthOk | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frames = FrameDecoder(16 * 1024 * 1024)
        self._next_req = 1
        self._by_req: dict[int, asyncio.Future[Any]] = {}
        self._by_seq: dict[int, asyncio.Future[Any]] = {}
        self._control: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self.closed_error: BaseException | None = None

    async def connect(self, host: str, port: int, nonce: bytes | None = None) -> m.AuthOk:
        self._reader, self._writer = await asyncio.open_connection(host, port)
        self._pump = asyncio.get_running_loop().create_task(self._read_loop())
        nonce = nonce or os.urandom(m.NONCE_BYTES)
        self.send(m.Hello(terminal_id=self.terminal_id, nonce=nonce))
        challenge = await self._expect(m.Challenge)
        self.send(m.Auth(mac=auth_mac(self.key, self.terminal_id, nonce, challenge.nonce)))
        self.auth_ok = await self._expect(m.AuthOk)
        return self.auth_ok

    def send(self, msg: m.Msg) -> None:
        self.send_raw(encode_frame(m.encoder.encode(msg)))

    def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        if self.closed_error is not None or self._writer.is_closing():
            raise ConnectionError(f"connection lost: {self.closed_error!r}")
        self._writer.write(data)

    async def next_control(self, timeout_s: float = 10.0) -> Any:
        """The next message that answers no tap (challenge, auth_ok, pong, params, error)."""
        return await asyncio.wait_for(self._control.get(), timeout_s)

    async def _expect(self, kind: type) -> Any:
        msg = await self.next_control()
        if isinstance(msg, m.Error):
            raise ServerError(msg)
        if not isinstance(msg, kind):
            raise CityCardError(f"expected {kind.__name__}, got {msg!r}")
        return msg

    async def tap(self, seq: int, card: int, time_ms: int, kind: int, route: int = 0,
                  amount_fen: int = 0) -> m.Result:
        fut = asyncio.get_running_loop().create_future()
        self._by_seq[seq] = fut
        self.send(m.Tap(seq=seq, card=card, time_ms=time_ms, kind=kind, route=route, amount_fen=amount_fen))
        return await fut

    def taps_nowait(self, items: Sequence[m.TapItem]) -> "asyncio.Future[m.Results]":
        return self.send_taps(items)[1]

    def send_taps(self, items: Sequence[m.TapItem]) -> "tuple[int, asyncio.Future[m.Results]]":
        """Send one ``taps`` batch; its ``req`` and the future of its ``results``."""
        req = self._next_req
        self._next_req = req % 0xFFFF_FFFF + 1  # distinct while outstanding; wraps as section 8 allows
        fut: asyncio.Future[m.Results] = asyncio.get_running_loop().create_future()
        self.send(m.TapBatch(req=req, taps=list(items)))  # first: a failed send leaves no orphan future
        self._by_req[req] = fut
        return req, fut

    async def taps(self, items: Sequence[m.TapItem]) -> m.Results:
        return await self.taps_nowait(items)

    async def drain(self) -> None:
        if self._writer is not None:
            await self._writer.drain()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                for body in self._frames.feed(data):
                    self._dispatch(m.server_decoder.decode(body))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - everything waiting learns of it
            self.closed_error = exc
            for fut in list(self._by_req.values()) + list(self._by_seq.values()):
                if not fut.done():
                    fut.set_exception(ConnectionError(f"connection lost: {exc!r}"))
            self._by_req.clear()
            self._by_seq.clear()
            self._control.put_nowait(exc if isinstance(exc, m.Error) else m.Error(code=0, message=repr(exc)))

    def _dispatch(self, msg: Any) -> None:
        t = type(msg)
        if t is m.Results:
            fut = self._by_req.pop(msg.req, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif t is m.Result:
            fut = self._by_seq.pop(msg.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        else:
            self._control.put_nowait(msg)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
