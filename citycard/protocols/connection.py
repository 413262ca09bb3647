"""Server side of one terminal connection, sans-I/O (in the spirit of h11).

The shell feeds received bytes in and gets events out; it asks for bytes to send. Time and
nonces come in as arguments. Authentication itself (key lookup, replay check) is the shell's
call to the TerminalSession actor; this object only enforces the order of messages.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import msgspec

from ..errors import LocalProtocolError
from .codes import FATAL, ErrorCode
from .dupkeys import map_entries, repeats_key
from .frames import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from .messages import (
    CLIENT_TAGS,
    PROTOCOL_VERSION,
    Auth,
    AuthOk,
    Challenge,
    Error,
    Hello,
    Msg,
    OfflineRecordItem,
    OfflineUpload,
    ParamsRequest,
    Ping,
    Tap,
    TapBatch,
    TapItem,
    client_decoder,
    encoder,
)

MAX_BAD_MESSAGES = 10
# Frame limit before READY. hello (59 bytes with the longest fields) and auth (46) fit with room
# for appended fields; an unauthenticated peer cannot make us hold max_frame_bytes until the
# auth timeout (docs/reliability.md, F5).
PREAUTH_MAX_FRAME_BYTES = 1024

# What msgspec raises on bad input: DecodeError (ValidationError is one) and, for a str that
# is not UTF-8, UnicodeDecodeError. Deep nesting raises RecursionError, handled apart.
_BAD_INPUT = (msgspec.DecodeError, UnicodeDecodeError)
# The list of maps a message type reads, walked for repeated keys (dupkeys.repeats_key): only
# there; an unknown field of another message with that name is ignored and may hold anything.
_LISTS: dict[type, str] = {TapBatch: "taps", OfflineUpload: "records"}


class State(Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"  # challenge sent
    VERIFYING = "verifying"  # auth received, shell is checking it
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HelloReceived:
    terminal_id: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class AuthReceived:
    terminal_id: int
    terminal_nonce: bytes
    server_nonce: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class TapsReceived:
    req: int  # 0 for a single "tap" message
    taps: Sequence[Tap | TapItem]
    single: bool


@dataclass(frozen=True, slots=True)
class PingReceived:
    time_ms: int


@dataclass(frozen=True, slots=True)
class ParamsRequested:
    fare_version: int
    hotlist_version: int
    fares: bool = False


@dataclass(frozen=True, slots=True)
class OfflineReceived:
    """An ``offline`` upload (section 15): answer it with an ``OfflineAck`` of the same req
    and batch_seq after the decisions are durable, or with an ``Error`` naming the req."""

    terminal_id: int
    req: int
    batch_seq: int
    records: Sequence[OfflineRecordItem]
    mac: bytes


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol. ``reply`` is the error frame to send; close if fatal."""

    code: ErrorCode
    message: str
    reply: bytes
    fatal: bool


Event = (HelloReceived | AuthReceived | TapsReceived | PingReceived | ParamsRequested | OfflineReceived
         | Violation)


class ServerConnection:
    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        preauth_max_frame_bytes: int = PREAUTH_MAX_FRAME_BYTES,
    ) -> None:
        self.state = State.AWAIT_HELLO
        self.terminal_id = 0
        self._terminal_nonce = b""
        self._server_nonce = b""
        self._max_frame_bytes = max_frame_bytes
        self._frames = FrameDecoder(min(preauth_max_frame_bytes, max_frame_bytes))
        self.bad_messages = 0
        # CLOSED by the peer's fatal error: requests it sent before it are still answered
        # (then the error frame, then the close); a close by the shell ends all output.
        self.answers_owed = False

    # -- input -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        bodies, error = self._frames.feed_partial(data)
        events: list[Event] = []
        for body in bodies:
            event = self._handle_body(body)
            if event is not None:
                events.append(event)
            if self.closed:
                return events
        if error is not None:
            message = str(error)
            if error.code == ErrorCode.FRAME_TOO_LARGE and self.state is not State.READY:
                message += " before authentication"
            events.append(self._violation(ErrorCode(error.code), message))
        return events

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def _handle_body(self, body: bytes) -> Event | None:
        try:
            msg = client_decoder.decode(body)
        except _BAD_INPUT as exc:
            return self._bad_message(body, str(exc))
        except RecursionError:
            return self._counted(ErrorCode.BAD_MESSAGE, "MessagePack nested too deeply")
        try:
            repeated = repeats_key(body, encoder.encode(msg), _LISTS.get(type(msg), ""))
        except _BAD_INPUT as exc:  # not expected (the typed decode read it); refused, never raised
            return self._counted(ErrorCode.BAD_MESSAGE, str(exc))
        if repeated:
            return self._repeated_key(body, msg)
        state = self.state
        if state is State.READY:
            if type(msg) is TapBatch:
                return TapsReceived(msg.req, msg.taps, False)
            if type(msg) is Tap:
                return TapsReceived(0, [msg], True)
            if type(msg) is Ping:
                return PingReceived(msg.time_ms)
            if type(msg) is ParamsRequest:
                return ParamsRequested(msg.fare_version, msg.hotlist_version, msg.fares)
            if type(msg) is OfflineUpload:
                return OfflineReceived(self.terminal_id, msg.req, msg.batch_seq, msg.records, msg.mac)
            return self._unexpected(msg)
        if state is State.AWAIT_HELLO and type(msg) is Hello and not self.terminal_id:
            if msg.version != PROTOCOL_VERSION:
                return self._violation(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"protocol version {msg.version} not served; this server speaks {PROTOCOL_VERSION}",
                )
            self.terminal_id = msg.terminal_id
            self._terminal_nonce = msg.nonce
            return HelloReceived(msg.terminal_id, msg.nonce)
        if state is State.AWAIT_AUTH and type(msg) is Auth:
            self.state = State.VERIFYING
            return AuthReceived(self.terminal_id, self._terminal_nonce, self._server_nonce, msg.mac)
        if type(msg) in (Tap, TapBatch, Ping, ParamsRequest, OfflineUpload):
            return self._counted(ErrorCode.NOT_AUTHENTICATED, "authenticate (hello, auth) first",
                                 getattr(msg, "req", 0), msg.seq if type(msg) is Tap else 0)
        return self._unexpected(msg)

    # -- output ------------------------------------------------------------------------
    def challenge(self, server_nonce: bytes, now_ms: int) -> bytes:
        if self.state is State.CLOSED and self.answers_owed and self.terminal_id:
            return encode_frame(encoder.encode(Challenge(nonce=server_nonce, server_time_ms=now_ms)))
        if self.state is not State.AWAIT_HELLO or not self.terminal_id:
            raise LocalProtocolError("challenge only answers a hello", ErrorCode.INTERNAL)
        self._server_nonce = server_nonce
        self.state = State.AWAIT_AUTH
        return self.send(Challenge(nonce=server_nonce, server_time_ms=now_ms))

    def accept(self, auth_ok: AuthOk) -> bytes:
        if self.state is State.CLOSED and self.answers_owed:
            return encode_frame(encoder.encode(auth_ok))  # answered, but the connection stays closed
        if self.state is not State.VERIFYING:
            raise LocalProtocolError("accept only answers an auth", ErrorCode.INTERNAL)
        self.state = State.READY
        # A terminal sends nothing between auth and auth_ok, so no frame of its own is judged
        # by the wrong limit when it is raised here.
        self._frames.max_frame_bytes = self._max_frame_bytes
        return self.send(auth_ok)

    def reject(self, code: ErrorCode, message: str) -> bytes:
        self.state = State.CLOSED
        return self.send(Error(code=int(code), message=message))

    def send(self, msg: Msg) -> bytes:
        if self.state is State.CLOSED and type(msg) is not Error and not self.answers_owed:
            raise LocalProtocolError("connection is closed", ErrorCode.INTERNAL)
        return encode_frame(encoder.encode(msg))

    def close(self) -> None:
        self.state = State.CLOSED
        self.answers_owed = False

    # -- errors ------------------------------------------------------------------------
    def _bad_message(self, body: bytes, detail: str) -> Violation:
        try:
            generic = msgspec.msgpack.decode(body)
        except _BAD_INPUT:
            return self._counted(ErrorCode.BAD_MESSAGE, f"not MessagePack: {detail}")
        except RecursionError:
            return self._counted(ErrorCode.BAD_MESSAGE, "MessagePack nested too deeply")
        except TypeError:  # a map key the generic decoder cannot hold (a map as a key)
            return self._counted(ErrorCode.BAD_MESSAGE, detail)
        if isinstance(generic, dict):
            if len(generic) != map_entries(body):  # a key repeated ("t" too): refused as such
                return self._counted(ErrorCode.BAD_MESSAGE, "a map repeats a key", *_names(body, generic))
            tag = generic.get("t")
            if not (isinstance(tag, str) and tag in CLIENT_TAGS):
                return self._counted(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {tag!r:.80}")
            return self._counted(ErrorCode.BAD_MESSAGE, detail, *_names(body, generic))
        return self._counted(ErrorCode.BAD_MESSAGE, detail)

    def _repeated_key(self, body: bytes, msg: Msg) -> Violation:
        """Refused, never decided: which value would count is the sender's guess (section 3)."""
        req = getattr(msg, "req", 0) if body.count(b"req") == 1 else 0
        seq = msg.seq if type(msg) is Tap and body.count(b"seq") == 1 else 0
        return self._counted(ErrorCode.BAD_MESSAGE, "a map repeats a key", req, seq)

    def _unexpected(self, msg: Msg) -> Violation:
        tag = msg.__struct_config__.tag
        return self._counted(
            ErrorCode.UNEXPECTED_MESSAGE, f"{tag!r} not allowed in state {self.state.value}"
        )

    def _counted(self, code: ErrorCode, message: str, req: int = 0, seq: int = 0) -> Violation:
        self.bad_messages += 1
        if self.bad_messages > MAX_BAD_MESSAGES:
            return self._violation(ErrorCode.TOO_MANY_ERRORS, f"more than {MAX_BAD_MESSAGES} bad messages", req, seq)
        return self._violation(code, message, req, seq)

    def _violation(self, code: ErrorCode, message: str, req: int = 0, seq: int = 0) -> Violation:
        fatal = code in FATAL
        reply = encode_frame(encoder.encode(Error(code=int(code), message=message, req=req, seq=seq)))
        if fatal:
            self.state = State.CLOSED
            self.answers_owed = True
        return Violation(code, message, reply, fatal)


def _names(body: bytes, generic: dict[object, object]) -> tuple[int, int]:
    """(req, seq) of a message that broke its schema, where readable: a tap's seq, a batch's
    req, so the terminal knows which request was dropped (0: not readable). A key the body
    holds twice is not readable: the bytes "seq" must occur once."""
    tag = generic.get("t")
    req = generic.get("req") if tag in ("taps", "offline") and body.count(b"req") == 1 else 0
    seq = generic.get("seq") if tag == "tap" and body.count(b"seq") == 1 else 0
    return (req if type(req) is int and 0 < req < 2**32 else 0,
            seq if type(seq) is int and 0 < seq < 2**32 else 0)
