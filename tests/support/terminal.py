"""The test side of the terminal protocol: raw connections, hand-made frames, a fast
pre-encoded load connection, and the error codes docs/protocol.md documents.

A well-behaved terminal's bytes (hello, auth, requests) come from the sans-I/O
``ClientConnection``; only the malformed and out-of-order cases of the tests are built by hand.
"""

import asyncio
import os
import re
import time
from array import array
from typing import Any

import msgpack

from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key
from citycard.protocols.client import (
    Authenticated,
    BatchAnswered,
    Challenged,
    ClientConnection,
    Event,
)
from citycard.protocols.codes import ErrorCode
from citycard.protocols.frames import encode_frame
from citycard.terminal.client import TerminalClient
from tests.support.paths import ROOT

HOST = "127.0.0.1"
BUSY = int(Result.BUSY)


def frame(obj: Any) -> bytes:
    """A frame of raw bytes, or of any object packed by the independent msgpack package."""
    body = obj if isinstance(obj, bytes) else msgpack.packb(obj, use_bin_type=True)
    return encode_frame(body)


def encode(msg: m.Msg) -> bytes:
    """A frame of one protocol message, as the product encodes it."""
    return encode_frame(m.encoder.encode(msg))


def unframe(data: bytes) -> list[Any]:
    """Whole frames of ``data``, each body decoded by msgpack (a trailing partial frame is cut)."""
    frames = []
    while len(data) >= 4:
        n = int.from_bytes(data[:4], "big")
        frames.append(msgpack.unpackb(data[4 : 4 + n]))
        data = data[4 + n :]
    return frames


# -- documented error codes (docs/protocol.md section 10) ----------------------------------
def documented_error_codes() -> dict[int, str]:
    """``code -> name`` from the table of docs/protocol.md section 10."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## 10. Error codes", 1)[1].split("\n## ", 1)[0]
    return {int(c): n for c, n in re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", section, re.M)}


DOCUMENTED_ERRORS = documented_error_codes()
FATAL_NAMES = {"BAD_FRAME", "FRAME_TOO_LARGE", "AUTH_FAILED", "UNKNOWN_TERMINAL", "TERMINAL_DISABLED",
               "AUTH_REPLAY", "UNSUPPORTED_VERSION", "TOO_MANY_ERRORS", "AUTH_TIMEOUT"}


def assert_documented_error(msg: dict[str, Any]) -> int:
    """An ``error`` frame carries a code documented in section 10 under its own name."""
    assert msg["t"] == "error", msg
    code = msg["code"]
    assert code in DOCUMENTED_ERRORS, f"undocumented error code {code}: {msg}"
    assert DOCUMENTED_ERRORS[code] == ErrorCode(code).name, (code, DOCUMENTED_ERRORS[code])
    assert isinstance(msg.get("message"), str)
    return int(code)


# -- raw connections ------------------------------------------------------------------------
class RawConn:
    """One raw TCP connection: send bytes, read whole frames (decoded with msgpack) or EOF.

    With a ``client`` every whole frame read is fed to it too, so it follows the handshake and
    ``client.hello()``/``client.auth()`` give a well-behaved terminal's bytes to ``send``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 client: ClientConnection | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self._client = client
        self.events: list[Event] = []  # what the client made of the frames read
        self.buf = b""
        self.closed = False
        self.frames_sent = 0

    @classmethod
    async def open(cls, port: int, timeout_s: float = 5.0, client: ClientConnection | None = None) -> "RawConn":
        r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout_s)
        return cls(r, w, client)

    @classmethod
    async def authenticated(cls, port: int, terminal_id: int, key: bytes, timeout_s: float = 5.0) -> "RawConn":
        """A connection past hello, challenge, auth and auth_ok, by the client connection."""
        conn = await cls.open(port, timeout_s, ClientConnection(terminal_id, key))
        await conn.hello()
        ch = await conn.read(timeout_s)
        assert ch is not None and ch["t"] == "challenge", ch
        await conn.auth()
        ok = await conn.read(timeout_s)
        assert ok is not None and ok["t"] == "auth_ok", ok
        return conn

    @property
    def client(self) -> ClientConnection:
        assert self._client is not None, "a raw connection opened without a client connection"
        return self._client

    @client.setter
    def client(self, client: ClientConnection) -> None:
        """A client connection from here on (before the hello it sends)."""
        self._client = client

    async def hello(self, nonce: bytes | None = None) -> bytes:
        """The client's hello (a fresh nonce unless given); returns the nonce."""
        nonce = nonce or os.urandom(m.NONCE_BYTES)
        await self.send(self.client.hello(nonce))
        return nonce

    async def auth(self, mac: bytes | None = None, then: bytes = b"", frames: int = 1) -> bytes:
        """The client's answer to the challenge read (``mac``: a wrong one on purpose), with
        ``then`` appended in the same write (``frames``: how many frames that makes). Returns
        the auth frame sent."""
        frame = self.client.auth(mac)
        await self.send(frame + then, frames)
        return frame

    async def send(self, data: bytes, frames: int = 1) -> None:
        self.frames_sent += frames
        if self.closed:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.closed = True

    def _take(self) -> dict[str, Any] | None:
        if len(self.buf) < 4:
            return None
        n = int.from_bytes(self.buf[:4], "big")
        if len(self.buf) < 4 + n:
            return None
        if self._client is not None:
            self.events += self._client.receive_data(self.buf[: 4 + n])
        body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        assert isinstance(msg, dict) and isinstance(msg.get("t"), str), msg
        return msg

    async def read(self, timeout_s: float = 3.0) -> dict[str, Any] | None:
        """The next frame; None on EOF or when nothing whole arrives in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not await self._fill(left):
                return None

    async def wait_closed(self, timeout_s: float = 3.0) -> bool:
        """Read (and return whether) EOF arrives within ``timeout_s``; frames meanwhile are kept."""
        deadline = time.monotonic() + timeout_s
        while not self.closed and time.monotonic() < deadline:
            if not await self._fill(deadline - time.monotonic()):
                break
        return self.closed

    async def _fill(self, timeout_s: float) -> bool:
        """One read into the buffer (EOF or a reset marks the connection closed); False on timeout."""
        try:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout_s)
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            chunk = b""
        if chunk:
            self.buf += chunk
        else:
            self.closed = True
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - already gone
            pass


async def raw_exchange(port: int, payload: bytes, read_timeout_s: float = 5.0) -> tuple[list[dict], bool]:
    """Send raw bytes on a fresh connection; return the decoded frames and whether it closed."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(payload)
    await writer.drain()
    data = b""
    closed = False
    deadline = time.monotonic() + read_timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.5)
        except TimeoutError:
            if data:
                break
            continue
        if not chunk:
            closed = True
            break
        data += chunk
    writer.close()
    return unframe(data), closed


# -- load from pre-encoded frames -----------------------------------------------------------
class LoadConn:
    """One authenticated terminal connection sending ``taps`` frames encoded ahead of time by
    its client connection (``batch``); a read loop matches answers by ``req`` through the
    client's events (no per-answer futures)."""

    def __init__(self, terminal_id: int) -> None:
        self.terminal_id = terminal_id
        self.sent: dict[int, tuple[float, int]] = {}  # req -> (send time, first seq)
        self.accepted = array("q")  # seqs answered with anything but BUSY
        self.lat = array("d")  # one latency per accepted tap (a batch's taps share one)
        self.busy = 0
        self.answered = 0
        self.other: list[Any] = []  # every event but a batch's answer

    async def connect(self, port: int, master_key: bytes) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, port)
        self.conn = ClientConnection(self.terminal_id, terminal_key(master_key, self.terminal_id))
        self.writer.write(self.conn.hello(os.urandom(m.NONCE_BYTES)))
        await self._until(Challenged)
        self.writer.write(self.conn.auth())
        await self._until(Authenticated)
        self.pump = asyncio.get_running_loop().create_task(self._read_loop())

    async def _until(self, kind: type) -> None:
        while True:
            data = await self.reader.read(65536)
            assert data, "closed during the handshake"
            events = self.conn.receive_data(data)
            assert all(isinstance(e, (Challenged, Authenticated)) for e in events), events
            if any(isinstance(e, kind) for e in events):
                return

    def batch(self, req: int, items: list[m.TapItem]) -> bytes:
        """The frame of a ``taps`` batch, tracked by the client until its answer is read."""
        return self.conn.taps(items, req)[1]

    async def _read_loop(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.other.append("closed by the server")
                return
            for event in self.conn.receive_data(data):
                if type(event) is BatchAnswered:
                    self._answered(event.results)
                else:
                    self.other.append(event)

    def _answered(self, msg: m.Results) -> None:
        t_sent, _ = self.sent.pop(msg.req)
        lat = time.perf_counter() - t_sent
        for r in msg.results:
            self.answered += 1
            if r.code == BUSY:
                self.busy += 1
            else:
                self.accepted.append(r.seq)
                self.lat.append(lat)

    def send(self, req: int, first_seq: int, data: bytes) -> None:
        self.sent[req] = (time.perf_counter(), first_seq)
        self.writer.write(data)

    async def close(self) -> None:
        self.pump.cancel()
        self.writer.close()


# -- taps through the product's client -------------------------------------------------------
async def ride(client: TerminalClient, seq: int, card: int, route: int = 12) -> m.Result:
    """A bus tap timed 40 s apart per seq: out of the same terminal's anti-passback window."""
    return await client.tap(seq, card, int(time.time() * 1000) + seq * 40_000, int(TapKind.BUS), route)
