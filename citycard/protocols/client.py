"""Terminal side of one connection, sans-I/O: the client twin of ``connection.ServerConnection``.

The shell feeds received bytes in and gets events out; each method that sends returns the bytes
to write. Nonces and times come in as arguments. Answers are matched to what was sent on this
connection: a ``result`` by seq, a ``results`` by req, a ``pong`` by its echoed time, a
``params_info`` to an outstanding ``params``. A server that breaks the protocol shows up as a
``Violation`` event; asking this object to send what the protocol forbids raises
``LocalProtocolError`` (docs/protocol.md, sections 2, 5, 8 and 10).
"""

from collections.abc import Sequence
from operator import attrgetter

import msgspec

from ..errors import LocalProtocolError, RemoteProtocolError
from .auth import auth_mac
from .client_events import (
    Authenticated,
    BatchAnswered,
    Challenged,
    ClientState,
    ErrorReceived,
    Event,
    OfflineAnswered,
    ParamsReceived,
    PongReceived,
    TapAnswered,
    Violation,
)
from .codes import FATAL, ErrorCode
from .connection import PREAUTH_MAX_FRAME_BYTES
from .frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from .messages import (
    MAX_BATCH_TAPS,
    MAX_OFFLINE_RECORDS,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SERVER_TAGS,
    Auth,
    AuthOk,
    Challenge,
    ClientMessage,
    Error,
    Hello,
    OfflineAck,
    OfflineRecordItem,
    OfflineUpload,
    Params,
    ParamsRequest,
    Ping,
    Pong,
    Result,
    Results,
    ServerMessage,
    Tap,
    TapBatch,
    TapItem,
    client_decoder,
    encoder,
    server_decoder,
)

# Requests awaiting an answer on one connection; a bound, far above what a terminal keeps
# outstanding (docs/protocol.md, section 8), so a runaway shell fails loudly.
MAX_PENDING_REQUESTS = 65_536
MAX_REQ = 2**32 - 1
_BAD_INPUT = (msgspec.DecodeError, UnicodeDecodeError)
_KNOWN_ERRORS = frozenset(int(code) for code in ErrorCode)
_seq = attrgetter("seq")

__all__ = [
    "MAX_PENDING_REQUESTS", "Authenticated", "BatchAnswered", "Challenged", "ClientConnection",
    "ClientState", "ErrorReceived", "Event", "OfflineAnswered", "ParamsReceived", "PongReceived", "TapAnswered",
    "Violation",
]


class ClientConnection:
    def __init__(
        self,
        terminal_id: int,
        key: bytes,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_pending: int = MAX_PENDING_REQUESTS,
    ) -> None:
        """``key`` is the terminal key K_t (``auth.terminal_key``), never the master key.
        ``max_frame_bytes`` bounds frames both ways (the server's limit, 256 KiB by default)."""
        self.state = ClientState.IDLE
        self.terminal_id = terminal_id
        self.auth_ok: AuthOk | None = None
        self._key = key
        self._nonce = b""
        self._server_nonce = b""
        self._max_frame_bytes = max_frame_bytes
        self._max_pending = max_pending
        self._frames = FrameDecoder(max_frame_bytes)
        self._raw_frames: FrameDecoder | None = None  # what send_raw sent, to track its requests
        self._batches: dict[int, list[int]] = {}  # req -> the seqs of the batch's taps
        self._uploads: dict[int, tuple[int, int]] = {}  # req -> (batch_seq, records) of an offline upload
        self._taps: dict[int, int] = {}  # seq -> single taps outstanding with it
        self._pings: dict[int, int] = {}  # time_ms -> pings outstanding with it
        self._params = 0  # params requests outstanding
        self._pending = 0
        self._next_req = 1
        self.last_req = 0  # the req of the latest upload()
        self._max_batch = MAX_BATCH_TAPS

    @property
    def closed(self) -> bool:
        return self.state is ClientState.CLOSED

    @property
    def pending(self) -> int:
        """Requests sent on this connection and not answered yet."""
        return self._pending

    @property
    def max_batch(self) -> int:
        """Most taps in one batch: ``auth_ok.max_batch``, within the protocol's bound."""
        return self._max_batch

    # -- output: authentication -------------------------------------------------------------
    def hello(self, nonce: bytes, version: int = PROTOCOL_VERSION) -> bytes:
        """``nonce``: 16 fresh bytes from a cryptographic RNG, new for every connection."""
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError("hello opens a connection, once", ErrorCode.UNEXPECTED_MESSAGE)
        if len(nonce) != NONCE_BYTES:
            raise LocalProtocolError(f"a nonce has {NONCE_BYTES} bytes", ErrorCode.BAD_MESSAGE)
        self._nonce = nonce
        self.state = ClientState.AWAIT_CHALLENGE
        return self._frame(Hello(terminal_id=self.terminal_id, nonce=nonce, version=version))

    def auth(self, mac: bytes | None = None) -> bytes:
        """The MAC over both nonces (section 6); ``mac``: one of the caller's own (tests)."""
        if self.state is not ClientState.CHALLENGED:
            raise LocalProtocolError("auth only answers a challenge", ErrorCode.UNEXPECTED_MESSAGE)
        if mac is None:
            mac = auth_mac(self._key, self.terminal_id, self._nonce, self._server_nonce)
        self.state = ClientState.AWAIT_AUTH_OK
        return self._frame(Auth(mac=mac))

    # -- output: requests -----------------------------------------------------------------
    def tap(self, tap: Tap | TapItem) -> bytes:
        """One ``tap``, answered by a ``result`` with its seq."""
        self._check_ready()
        if isinstance(tap, TapItem):
            tap = Tap(seq=tap.seq, card=tap.card, time_ms=tap.time_ms, kind=tap.kind,
                      route=tap.route, amount_fen=tap.amount_fen, bill_class=tap.bill_class)
        frame = self._frame(tap)
        self._taps[tap.seq] = self._taps.get(tap.seq, 0) + 1
        self._pending += 1
        return frame

    def taps(self, items: Sequence[TapItem], req: int | None = None) -> tuple[int, bytes]:
        """One ``taps`` batch; its req (the next free one unless given) and its bytes."""
        # The load lab's sender calls this per batch: the common case takes the fewest steps.
        if self.state is not ClientState.READY or self._pending >= self._max_pending:
            self._check_ready()
        n = len(items)
        seqs = list(map(_seq, items))
        if not 0 < n <= self._max_batch or len(set(seqs)) != n:
            raise LocalProtocolError(
                f"a batch holds 1 to {self.max_batch} taps with distinct seqs", ErrorCode.BAD_MESSAGE)
        if req is None:
            req = self._next_req
            if req in self._batches or req in self._uploads:
                req = self._free_req()
            self._next_req = req % MAX_REQ + 1
        elif req in self._batches or req in self._uploads or not 0 <= req <= MAX_REQ:
            raise LocalProtocolError(f"req {req} is outstanding or out of range", ErrorCode.BAD_MESSAGE)
        body = encoder.encode(TapBatch(req=req, taps=items if isinstance(items, list) else list(items)))
        if len(body) > self._max_frame_bytes:
            raise LocalProtocolError(
                f"a frame of {len(body)} bytes exceeds the {self._max_frame_bytes}-byte limit",
                ErrorCode.FRAME_TOO_LARGE)
        self._batches[req] = seqs
        self._pending += 1
        return req, encode_frame(body)

    def upload(self, req: int | None, batch_seq: int, records: Sequence[OfflineRecordItem],
               mac: bytes) -> bytes:
        """One ``offline`` upload (section 15): 1 to MAX_OFFLINE_RECORDS records and the batch
        MAC of the terminal's SAM. ``req``: None takes the next free one (``last_req`` names
        it). Answered by an ``OfflineAnswered`` event of the same req, or an ``ErrorReceived``
        naming it (BAD_BATCH_MAC: nothing was journaled)."""
        self._check_ready()
        n = len(records)
        if not 0 < n <= MAX_OFFLINE_RECORDS:
            raise LocalProtocolError(f"an upload holds 1 to {MAX_OFFLINE_RECORDS} records, not {n}",
                                     ErrorCode.BAD_MESSAGE)
        if req is None:
            req = self._free_req()
            self._next_req = req % MAX_REQ + 1
        elif req in self._batches or req in self._uploads or not 0 <= req <= MAX_REQ:
            raise LocalProtocolError(f"req {req} is outstanding or out of range", ErrorCode.BAD_MESSAGE)
        frame = self._frame(OfflineUpload(req=req, batch_seq=batch_seq, records=list(records), mac=bytes(mac)))
        self._uploads[req] = (batch_seq, n)
        self.last_req = req
        self._pending += 1
        return frame

    def ping(self, time_ms: int) -> bytes:
        """``time_ms``: the terminal's clock; the ``pong`` echoes it."""
        self._check_ready()
        frame = self._frame(Ping(time_ms=time_ms))
        self._pings[time_ms] = self._pings.get(time_ms, 0) + 1
        self._pending += 1
        return frame

    def params(self, fare_version: int = 0, hotlist_version: int = 0, fares: bool = False) -> bytes:
        """Ask for the versions in force and the hotlist's changes since ``hotlist_version``;
        with ``fares``, for the fare table too if ``fare_version`` is not the one in force."""
        self._check_ready()
        frame = self._frame(ParamsRequest(fare_version=fare_version, hotlist_version=hotlist_version, fares=fares))
        self._params += 1
        self._pending += 1
        return frame

    def send(self, msg: ClientMessage) -> bytes:
        """Any terminal message, by its type: the method of that message does the work."""
        if isinstance(msg, Tap):
            return self.tap(msg)
        if isinstance(msg, TapBatch):
            return self.taps(msg.taps, msg.req)[1]
        if isinstance(msg, Ping):
            return self.ping(msg.time_ms)
        if isinstance(msg, ParamsRequest):
            return self.params(msg.fare_version, msg.hotlist_version)
        if isinstance(msg, OfflineUpload):
            return self.upload(msg.req, msg.batch_seq, msg.records, msg.mac)
        if isinstance(msg, Hello):
            return self.hello(msg.nonce, msg.version)
        return self.auth(msg.mac)

    def send_raw(self, data: bytes) -> bytes:
        """Bytes built by hand (tests of the server), sent past every check. The whole frames
        among them that decode as requests are tracked like any, so their answers match."""
        if self._raw_frames is None:
            self._raw_frames = FrameDecoder(2**32 - 1)
        try:
            bodies = self._raw_frames.feed(data)
        except RemoteProtocolError:
            bodies = []  # a zero length on purpose: nothing in it to track
        for body in bodies:
            try:
                msg = client_decoder.decode(body)
            except (*_BAD_INPUT, RecursionError):
                continue
            self._track(msg)
        return data

    def close(self) -> None:
        """The shell closed the socket: nothing more is sent or answered here."""
        self._lose_all()
        self.state = ClientState.CLOSED

    # -- input ---------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is ClientState.CLOSED:
            return []
        try:
            bodies = self._frames.feed(data)
        except RemoteProtocolError as exc:
            return [self._violation(ErrorCode(exc.code), f"server frame: {exc}", fatal=True)]
        events: list[Event] = []
        for body in bodies:
            events.append(self._handle_body(body))
            if self.closed:
                break
        return events

    def _handle_body(self, body: bytes) -> Event:
        try:
            msg = server_decoder.decode(body)
        except _BAD_INPUT as exc:
            return self._bad_message(body, str(exc))
        except RecursionError:
            return self._violation(ErrorCode.BAD_MESSAGE, "MessagePack nested too deeply")
        if isinstance(msg, Results):
            return self._results(msg)
        if isinstance(msg, Result):
            return self._result(msg)
        if isinstance(msg, Error):
            return self._error(msg)
        if isinstance(msg, OfflineAck):
            return self._offline_ack(msg)
        if isinstance(msg, Pong):
            return self._pong(msg)
        if isinstance(msg, Params):
            return self._params_info(msg)
        if isinstance(msg, Challenge) and self.state is ClientState.AWAIT_CHALLENGE:
            self._server_nonce = msg.nonce
            self.state = ClientState.CHALLENGED
            return Challenged(msg)
        if isinstance(msg, AuthOk) and self.state is ClientState.AWAIT_AUTH_OK:
            self.auth_ok = msg
            self._max_batch = min(max(msg.max_batch, 1), MAX_BATCH_TAPS)
            self.state = ClientState.READY
            return Authenticated(msg)
        tag = msg.__struct_config__.tag
        return self._unexpected(msg, f"{tag!r} not expected in state {self.state.value}")

    # -- answers ---------------------------------------------------------------------------
    def _results(self, msg: Results) -> Event:
        seqs = self._batches.pop(msg.req, None)
        if seqs is None:
            return self._unexpected(msg, f"results for req {msg.req}, not outstanding")
        self._pending -= 1
        if list(map(_seq, msg.results)) == seqs:
            return BatchAnswered(msg)
        return self._violation(
            ErrorCode.BAD_MESSAGE, f"results for req {msg.req} do not answer its taps in order",
            fatal=True, msg=msg)

    def _offline_ack(self, msg: OfflineAck) -> Event:
        sent = self._uploads.pop(msg.req, None)
        if sent is None:
            return self._unexpected(msg, f"offline_ack for req {msg.req}, not outstanding")
        self._pending -= 1
        if sent == (msg.batch_seq, len(msg.codes)):
            return OfflineAnswered(msg)
        return self._violation(
            ErrorCode.BAD_MESSAGE, f"offline_ack for req {msg.req} does not answer its batch {sent[0]} "
            f"of {sent[1]} records", fatal=True, msg=msg)

    def _result(self, msg: Result) -> Event:
        if not self._take(self._taps, msg.seq):
            return self._unexpected(msg, f"result for seq {msg.seq}, not outstanding")
        return TapAnswered(msg)

    def _pong(self, msg: Pong) -> Event:
        if not self._take(self._pings, msg.time_ms):
            return self._unexpected(msg, f"pong for time_ms {msg.time_ms}, no such ping")
        return PongReceived(msg)

    def _params_info(self, msg: Params) -> Event:
        if not self._params:
            return self._unexpected(msg, "params_info with no params outstanding")
        self._params -= 1
        self._pending -= 1
        return ParamsReceived(msg)

    def _error(self, msg: Error) -> Event:
        req = msg.req if msg.req and (self._batches.pop(msg.req, None) is not None
                                      or self._uploads.pop(msg.req, None) is not None) else 0
        seq = msg.seq if msg.seq and self._take(self._taps, msg.seq) else 0
        if req:
            self._pending -= 1
        # Unknown codes are fatal (section 10); INTERNAL is fatal during authentication.
        fatal = msg.code not in _KNOWN_ERRORS or msg.code in FATAL or (
            msg.code == ErrorCode.INTERNAL and self.state is not ClientState.READY)
        if fatal:
            self.close()
        return ErrorReceived(msg, fatal, req, seq)

    # -- helpers ---------------------------------------------------------------------------
    def _take(self, counts: dict[int, int], key: int) -> bool:
        n = counts.get(key, 0)
        if not n:
            return False
        if n == 1:
            del counts[key]
        else:
            counts[key] = n - 1
        self._pending -= 1
        return True

    def _track(self, msg: ClientMessage) -> None:
        if isinstance(msg, Tap):
            self._taps[msg.seq] = self._taps.get(msg.seq, 0) + 1
        elif isinstance(msg, TapBatch):
            self._batches[msg.req] = list(map(_seq, msg.taps))
        elif isinstance(msg, Ping):
            self._pings[msg.time_ms] = self._pings.get(msg.time_ms, 0) + 1
        elif isinstance(msg, ParamsRequest):
            self._params += 1
        elif isinstance(msg, OfflineUpload):
            self._uploads[msg.req] = (msg.batch_seq, len(msg.records))
        else:
            return
        self._pending += 1

    def _check_ready(self) -> None:
        if self.state is not ClientState.READY:
            code = ErrorCode.INTERNAL if self.closed else ErrorCode.NOT_AUTHENTICATED
            raise LocalProtocolError(f"not ready: state {self.state.value}", code)
        if self._pending >= self._max_pending:
            raise LocalProtocolError(
                f"{self._pending} requests outstanding, the bound is {self._max_pending}",
                ErrorCode.INTERNAL)

    def _free_req(self) -> int:
        req = self._next_req
        while req in self._batches or req in self._uploads:  # bounded: fewer than max_pending are outstanding
            req = req % MAX_REQ + 1
        return req

    def _frame(self, msg: ClientMessage) -> bytes:
        if self.state is ClientState.CLOSED:
            raise LocalProtocolError("connection is closed", ErrorCode.INTERNAL)
        body = encoder.encode(msg)
        limit = self._max_frame_bytes if self.state is ClientState.READY else PREAUTH_MAX_FRAME_BYTES
        if len(body) > limit:
            raise LocalProtocolError(
                f"a frame of {len(body)} bytes exceeds the {limit}-byte limit", ErrorCode.FRAME_TOO_LARGE)
        return encode_frame(body)

    def _lose_all(self) -> None:
        self._batches.clear()
        self._uploads.clear()
        self._taps.clear()
        self._pings.clear()
        self._params = self._pending = 0

    def _bad_message(self, body: bytes, detail: str) -> Violation:
        try:
            generic = msgspec.msgpack.decode(body)
        except (*_BAD_INPUT, RecursionError):
            return self._violation(ErrorCode.BAD_MESSAGE, f"not MessagePack: {detail}")
        if isinstance(generic, dict):
            tag = generic.get("t")
            if not (isinstance(tag, str) and tag in SERVER_TAGS):
                # Ignored, as section 3 asks: a newer server may send messages we do not know.
                return self._violation(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {tag!r:.80}")
        return self._violation(ErrorCode.BAD_MESSAGE, detail)

    def _unexpected(self, msg: ServerMessage, detail: str) -> Violation:
        return self._violation(ErrorCode.UNEXPECTED_MESSAGE, detail, msg=msg)

    def _violation(self, code: ErrorCode, message: str, fatal: bool = False,
                   msg: ServerMessage | None = None) -> Violation:
        if fatal:
            self.close()
        return Violation(code, message, fatal, msg)
