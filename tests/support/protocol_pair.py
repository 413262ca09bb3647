"""ClientConnection and ServerConnection paired in memory: a server shell that answers at
once and checks the real MAC, and a pair that carries each side's bytes to the other whole,
byte by byte or cut at random points. Used by the client's unit tests and the asyncio
client's tests."""

import random

from citycard.domain.offline import batch_key
from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key, verify_mac
from citycard.protocols.client import (
    Authenticated,
    Challenged,
    ClientConnection,
    ClientState,
    Event,
)
from citycard.protocols.codes import ErrorCode
from citycard.protocols.connection import (
    AuthReceived,
    HelloReceived,
    OfflineReceived,
    ParamsRequested,
    PingReceived,
    ServerConnection,
    TapsReceived,
)
from citycard.protocols.connection import Violation as ServerViolation
from citycard.protocols.frames import DEFAULT_MAX_FRAME_BYTES
from citycard.protocols.offline import items_mac_ok

from .terminal import encode as frame

__all__ = ["AUTH_OK", "BALANCE_FEN", "BATCH_MASTER_KEY", "FARE_FEN", "MASTER_KEY", "MODES", "NOW_MS", "S_NONCE", "TERMINAL_ID",
           "T_NONCE", "Pair", "Server", "chunks", "frame", "item"]

MASTER_KEY = bytes(range(32))
TERMINAL_ID = 1001
T_NONCE, S_NONCE = bytes(range(0xA0, 0xB0)), bytes(range(0xB0, 0xC0))
NOW_MS = 1_700_000_000_000
FARE_FEN, BALANCE_FEN = 182, 818
AUTH_OK = m.AuthOk(fare_version=1, hotlist_version=1, max_batch=1000, heartbeat_ms=30_000,
                   server_time_ms=NOW_MS)
MODES = ("whole", "bytes", "split")
BATCH_MASTER_KEY = bytes(range(0x40, 0x60))  # offline uploads: every record ACCEPTED if the MAC checks


def item(seq: int, card: int = 33_010_000_000_000_173) -> m.TapItem:
    return m.TapItem(seq=seq, card=card, time_ms=NOW_MS + seq, kind=1, route=42)


class Server:
    """A shell over ServerConnection: answers every request at once, checks the real MAC."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.conn = ServerConnection(max_frame_bytes)
        self.fail_reqs: set[int] = set()  # batches answered with a non-fatal INTERNAL error
        self.seen: list[object] = []

    def feed(self, data: bytes) -> bytes:
        out = b""
        for ev in self.conn.receive_data(data):
            self.seen.append(ev)
            out += self._answer(ev)
        return out

    def _answer(self, ev: object) -> bytes:
        c = self.conn
        if isinstance(ev, HelloReceived):
            return c.challenge(S_NONCE, NOW_MS)
        if isinstance(ev, AuthReceived):
            key = terminal_key(MASTER_KEY, ev.terminal_id)
            if verify_mac(key, ev.terminal_id, ev.terminal_nonce, ev.server_nonce, ev.mac):
                return c.accept(AUTH_OK)
            return c.reject(ErrorCode.AUTH_FAILED, "wrong MAC")
        if isinstance(ev, TapsReceived):
            if ev.req in self.fail_reqs:
                return c.send(m.Error(code=int(ErrorCode.INTERNAL), message="shard down", req=ev.req))
            if ev.single:
                return c.send(m.Result(seq=ev.taps[0].seq, code=0, fare_fen=FARE_FEN, balance_fen=BALANCE_FEN))
            items = [m.ResultItem(seq=t.seq, code=0, fare_fen=FARE_FEN, balance_fen=BALANCE_FEN) for t in ev.taps]
            return c.send(m.Results(req=ev.req, results=items))
        if isinstance(ev, OfflineReceived):
            if not items_mac_ok(batch_key(BATCH_MASTER_KEY, ev.terminal_id), ev.terminal_id, ev.batch_seq,
                                ev.records, ev.mac):
                return c.send(m.Error(code=int(ErrorCode.BAD_BATCH_MAC), message="bad batch MAC", req=ev.req))
            return c.send(m.OfflineAck(req=ev.req, batch_seq=ev.batch_seq, codes=[0] * len(ev.records)))
        if isinstance(ev, PingReceived):
            return c.send(m.Pong(time_ms=ev.time_ms, server_time_ms=NOW_MS))
        if isinstance(ev, ParamsRequested):
            return c.send(m.Params(fare_version=1, hotlist_version=3, hotlist_to=3, hotlist_added=[7]))
        assert isinstance(ev, ServerViolation)
        return ev.reply


def chunks(data: bytes, mode: str, rng: random.Random) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 5)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


class Pair:
    """Carries the bytes each side emits to the other, cut as ``mode`` says."""

    def __init__(self, mode: str, client: ClientConnection | None = None, server: Server | None = None) -> None:
        self.mode, self.rng = mode, random.Random(f"pair-{mode}")
        self.client = client or ClientConnection(TERMINAL_ID, terminal_key(MASTER_KEY, TERMINAL_ID))
        self.server = server or Server()

    def send(self, data: bytes) -> list[Event]:
        """Client bytes to the server; the server's answers back; the client's events."""
        answer = b"".join(self.server.feed(part) for part in chunks(data, self.mode, self.rng))
        return self.deliver(answer)

    def deliver(self, data: bytes) -> list[Event]:
        if not data:
            return []
        return [ev for part in chunks(data, self.mode, self.rng) for ev in self.client.receive_data(part)]

    def connect(self) -> m.AuthOk:
        [challenged] = self.send(self.client.hello(T_NONCE))
        assert isinstance(challenged, Challenged) and challenged.challenge.nonce == S_NONCE
        [ready] = self.send(self.client.auth())
        assert isinstance(ready, Authenticated) and self.client.state is ClientState.READY
        return ready.auth_ok
