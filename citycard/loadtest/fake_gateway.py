"""A gateway that speaks the real terminal protocol on 127.0.0.1 and answers every tap at once.

For measuring the load lab's sender alone (scripts/bench_sender.py runs it in its own process,
so its CPU is not counted) and for testing the sender: subclasses override ``on_batch`` to hold,
refuse or drop answers. It accepts any MAC; each ``taps`` batch gets one ``results``, OK with
fare ``FARE_FEN`` and balance ``BALANCE_FEN``, unless ``on_batch`` says otherwise.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from citycard.domain.results import Result
from citycard.protocols import messages as m
from citycard.protocols.frames import FrameDecoder, encode_frame

FARE_FEN, BALANCE_FEN = 200, 1000  # what every OK answer says
OK = int(Result.OK)


@dataclass(eq=False)
class Conn:
    writer: asyncio.StreamWriter
    terminal_id: int = 0
    number: int = 0  # 1 for the terminal's first authenticated connection, 2 for the next...
    seqs: list[int] = field(default_factory=list)  # every seq received here, in arrival order
    unanswered: list[m.TapItem] = field(default_factory=list)
    closed: bool = False


class FakeGateway:
    """Answers everything at once; subclasses override ``on_batch``."""

    def __init__(self) -> None:
        self.origin_unix_s = 0.0
        self.sends: defaultdict[tuple[int, int], list[m.TapItem]] = defaultdict(list)
        self.connections: Counter[int] = Counter()  # terminal id -> authenticated connections
        self.conns: list[Conn] = []
        self.errors: list[str] = []
        self._server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.TimerHandle] = []

    def run_s(self) -> float:
        """Seconds since the run's t = 0, by the same wall clock the sender uses."""
        return time.time() - self.origin_unix_s

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for conn in self.conns:
            conn.writer.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        conn = Conn(writer)
        self.conns.append(conn)
        frames = FrameDecoder()
        try:
            while not conn.closed:
                data = await reader.read(65536)
                if not data:
                    break
                for body in frames.feed(data):
                    self._on_message(conn, m.client_decoder.decode(body))
                    if conn.closed:
                        break
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - a test asserts there were none
            self.errors.append(repr(exc))
        finally:
            writer.close()
            self.handlers.discard(task)

    def _on_message(self, conn: Conn, msg: m.Msg) -> None:
        if isinstance(msg, m.Hello):
            conn.terminal_id = msg.terminal_id
            self.send(conn, m.Challenge(nonce=os.urandom(m.NONCE_BYTES),
                                        server_time_ms=int(time.time() * 1000)))
        elif isinstance(msg, m.Auth):  # any MAC will do
            self.connections[conn.terminal_id] += 1
            conn.number = self.connections[conn.terminal_id]
            self.send(conn, m.AuthOk(fare_version=1, hotlist_version=1, max_batch=1000,
                                     heartbeat_ms=30_000, server_time_ms=int(time.time() * 1000)))
        elif isinstance(msg, m.TapBatch):
            for item in msg.taps:
                self.sends[(conn.terminal_id, item.seq)].append(item)
                conn.seqs.append(item.seq)
            self.on_batch(conn, msg)
        else:
            self.errors.append(f"unexpected {msg!r}")

    def send(self, conn: Conn, msg: m.Msg) -> None:
        if not conn.writer.is_closing():
            conn.writer.write(encode_frame(m.encoder.encode(msg)))

    def answer(self, conn: Conn, batch: m.TapBatch, codes: list[int] | None = None) -> None:
        codes = codes if codes is not None else [OK] * len(batch.taps)
        self.send(conn, m.Results(req=batch.req, results=[
            m.ResultItem(seq=item.seq, code=code, fare_fen=FARE_FEN if code == OK else 0,
                         balance_fen=BALANCE_FEN if code == OK else -1)
            for item, code in zip(batch.taps, codes, strict=True)]))

    def later(self, delay_s: float, callback: Any, *args: Any) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay_s, callback, *args))

    def on_batch(self, conn: Conn, batch: m.TapBatch) -> None:
        self.answer(conn, batch)
