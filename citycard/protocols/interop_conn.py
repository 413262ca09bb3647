"""The inter-platform link's connection state machines, sans-I/O (docs/interop.md, section 2).

``IssuerSide`` is the issuer's end (it accepts the connection), ``AcquirerSide`` the acquirer's
(it opens it). Each takes the bytes read from the socket and returns a ``Step``: the bytes to
write, the events for the shell (taps, advice, answers), and whether to close. Both walk
hello -> auth -> ready; a fatal error (a bad frame or message, a failed signature, a message
before auth) ends in CLOSED, on the issuer's side after an ``error`` message naming it.
Nothing here reads a clock, draws a nonce or touches a socket: nonces and ``now_ms`` come in.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import RemoteProtocolError
from . import interop as ix

NONCE_BYTES = 16


class LinkState(Enum):
    AWAIT_HELLO = "await_hello"  # issuer: nothing yet; acquirer: hello sent, awaiting hello_ok
    AWAIT_AUTH = "await_auth"  # issuer: hello_ok sent; acquirer: auth sent, awaiting auth_ok
    READY = "ready"
    CLOSED = "closed"


# -- events for the shell -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PeerAuthenticated:
    city: str  # the peer, proven by its registered key
    heartbeat_ms: int = 0  # acquirer side: the issuer's heartbeat period


@dataclass(frozen=True, slots=True)
class TapIn:  # issuer side: decide it durably, then ``answer``
    tap: ix.RemoteTap


@dataclass(frozen=True, slots=True)
class AdviceIn:  # issuer side: decide every item durably, then ``ack``
    advice: ix.StandInAdvice


@dataclass(frozen=True, slots=True)
class AnswerIn:  # acquirer side
    answer: ix.RemoteTapAnswer


@dataclass(frozen=True, slots=True)
class AckIn:  # acquirer side
    ack: ix.StandInAdviceAck


@dataclass(frozen=True, slots=True)
class PongIn:
    pong: ix.Pong


@dataclass(frozen=True, slots=True)
class ErrorIn:  # acquirer side: the issuer's error (a fatal one is followed by its close)
    code: int
    message: str
    terminal_id: int = 0  # the tap it is about (0: none): its waiter hears "no answer" now
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str
    code: int = 0  # the LinkError sent or received, 0 if none


Event = PeerAuthenticated | TapIn | AdviceIn | AnswerIn | AckIn | PongIn | ErrorIn | Closed


@dataclass(slots=True)
class Step:
    out: bytes = b""
    events: list[Event] = field(default_factory=list)
    close: bool = False


_FATAL = frozenset({ix.LinkError.BAD_MESSAGE, ix.LinkError.UNSUPPORTED_VERSION, ix.LinkError.UNKNOWN_CITY,
                    ix.LinkError.AUTH_FAILED, ix.LinkError.NOT_AUTHENTICATED, ix.LinkError.BAD_FRAME})


def _nonce(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    return value


class IssuerSide:
    """The issuer's end of one connection. ``peers``: city code -> its registered link public
    key (raw 32 bytes); ``is_ours``: whether a card number is this issuer's."""

    def __init__(self, own: str, key: Ed25519PrivateKey, peers: Mapping[str, bytes], nonce: bytes,
                 is_ours: Callable[[int], bool], *, heartbeat_ms: int = 15_000) -> None:
        self.own = own
        self._key = key
        self._peers = peers
        self._nonce = _nonce(nonce)
        self._is_ours = is_ours
        self.heartbeat_ms = heartbeat_ms
        self._reader = ix.LinkReader(issuer_side=True)
        self._peer_nonce = b""
        self.state = LinkState.AWAIT_HELLO
        self.peer: str | None = None  # the claimed city after hello; proven once READY

    def receive_data(self, data: bytes, now_ms: int) -> Step:
        step = Step()
        if self.state is LinkState.CLOSED:
            return step  # drain: nothing read after a close counts
        try:
            messages = self._reader.feed(data)
        except RemoteProtocolError as exc:
            return self._fail(step, ix.LinkError(exc.code), str(exc))
        for msg in messages:
            self._on(msg, now_ms, step)
            if step.close:
                break
        return step

    def _on(self, msg: Any, now_ms: int, step: Step) -> None:
        if isinstance(msg, ix.RemoteTap | ix.StandInAdvice | ix.Ping) and self.state is not LinkState.READY:
            self._fail(step, ix.LinkError.NOT_AUTHENTICATED, f"{type(msg).__name__} before auth_ok")
        elif isinstance(msg, ix.RemoteTap):
            if self._check(msg.acquirer, (msg.card,), step):
                step.events.append(TapIn(msg))
        elif isinstance(msg, ix.StandInAdvice):
            if self._check(msg.acquirer, [i.card for i in msg.items], step):
                step.events.append(AdviceIn(msg))
        elif isinstance(msg, ix.Ping):
            step.out += ix.encode(ix.Pong(time_ms=msg.time_ms, server_time_ms=now_ms))
        elif isinstance(msg, ix.Hello):
            self._on_hello(msg, step)
        elif isinstance(msg, ix.Auth):
            self._on_auth(msg, now_ms, step)
        else:  # an issuer's message sent to the issuer cannot decode here; kept for safety
            self._fail(step, ix.LinkError.UNEXPECTED_MESSAGE, f"unexpected {type(msg).__name__}")

    def _on_hello(self, msg: ix.Hello, step: Step) -> None:
        if self.state is not LinkState.AWAIT_HELLO:
            step.out += self._error(ix.LinkError.UNEXPECTED_MESSAGE, "hello twice")
            return
        if msg.version != ix.LINK_VERSION:
            self._fail(step, ix.LinkError.UNSUPPORTED_VERSION, f"version {msg.version}; this issuer speaks "
                                                               f"{ix.LINK_VERSION}")
            return
        if msg.city not in self._peers or msg.city == self.own:
            self._fail(step, ix.LinkError.UNKNOWN_CITY, f"{msg.city} is not a registered acquirer")
            return
        self.peer, self._peer_nonce = msg.city, msg.nonce
        signature = ix.sign_auth(self._key, self.own, msg.city, self._nonce, msg.nonce)
        step.out += ix.encode(ix.HelloOk(city=self.own, nonce=self._nonce, signature=signature))
        self.state = LinkState.AWAIT_AUTH

    def _on_auth(self, msg: ix.Auth, now_ms: int, step: Step) -> None:
        if self.state is not LinkState.AWAIT_AUTH or self.peer is None:
            self._fail(step, ix.LinkError.NOT_AUTHENTICATED if self.state is LinkState.AWAIT_HELLO
                       else ix.LinkError.UNEXPECTED_MESSAGE, "auth out of turn")
            return
        if not ix.verify_auth(self._peers[self.peer], msg.signature, self.peer, self.own, self._peer_nonce,
                              self._nonce):
            self._fail(step, ix.LinkError.AUTH_FAILED, f"signature is not {self.peer}'s")
            return
        step.out += ix.encode(ix.AuthOk(server_time_ms=now_ms, heartbeat_ms=self.heartbeat_ms))
        self.state = LinkState.READY
        step.events.append(PeerAuthenticated(self.peer))

    def _check(self, acquirer: str, cards: Any, step: Step) -> bool:
        if acquirer != self.peer:
            step.out += self._error(ix.LinkError.WRONG_ACQUIRER, f"names {acquirer}; this connection is {self.peer}")
            return False
        for card in cards:
            if not self._is_ours(card):
                step.out += self._error(ix.LinkError.NOT_OUR_CARD, f"card {card} is not {self.own}'s")
                return False
        return True

    def _error(self, code: ix.LinkError, message: str, terminal_id: int = 0, seq: int = 0) -> bytes:
        return ix.encode(ix.Error(code=int(code), message=message[: ix.MAX_MESSAGE_CHARS], terminal_id=terminal_id,
                                  seq=seq))

    def _fail(self, step: Step, code: ix.LinkError, message: str) -> Step:
        assert code in _FATAL or code is ix.LinkError.UNEXPECTED_MESSAGE
        step.out += self._error(code, message)
        step.events.append(Closed(message, int(code)))
        step.close = True
        self.state = LinkState.CLOSED
        return step

    # -- answers from the shell (after the decision is durable) -----------------------------
    def answer(self, answer: ix.RemoteTapAnswer) -> bytes:
        return ix.encode(answer) if self.state is LinkState.READY else b""

    def ack(self, ack: ix.StandInAdviceAck) -> bytes:
        return ix.encode(ack) if self.state is LinkState.READY else b""

    def internal_error(self, message: str, terminal_id: int = 0, seq: int = 0) -> bytes:
        """The issuer failed (the store, a shard): the acquirer retries with the same key. For one
        tap, name its key so the acquirer stops waiting for its answer at once."""
        if self.state is not LinkState.READY:
            return b""
        return self._error(ix.LinkError.INTERNAL, message, terminal_id, seq)


class AcquirerSide:
    """The acquirer's end of one connection to ``issuer``, whose registered link public key is
    ``issuer_key``. ``hello()`` first, then feed what the socket reads."""

    def __init__(self, own: str, key: Ed25519PrivateKey, issuer: str, issuer_key: bytes, nonce: bytes) -> None:
        self.own = own
        self.issuer = issuer
        self._key = key
        self._issuer_key = issuer_key
        self._nonce = _nonce(nonce)
        self._reader = ix.LinkReader(issuer_side=False)
        self.state = LinkState.AWAIT_HELLO
        self._hello_sent = False

    def hello(self) -> bytes:
        if self._hello_sent:
            raise RuntimeError("hello already sent on this connection")
        self._hello_sent = True
        return ix.encode(ix.Hello(city=self.own, nonce=self._nonce))

    def receive_data(self, data: bytes) -> Step:
        step = Step()
        if self.state is LinkState.CLOSED:
            return step
        try:
            messages = self._reader.feed(data)
        except RemoteProtocolError as exc:
            return self._fail(step, str(exc), exc.code)
        for msg in messages:
            self._on(msg, step)
            if step.close:
                break
        return step

    def _on(self, msg: Any, step: Step) -> None:
        if isinstance(msg, ix.Error):
            step.events.append(ErrorIn(msg.code, msg.message, msg.terminal_id, msg.seq))
            if msg.code in _FATAL:
                self._fail(step, f"issuer closed: {msg.message}", msg.code)
        elif isinstance(msg, ix.HelloOk):
            self._on_hello_ok(msg, step)
        elif isinstance(msg, ix.AuthOk):
            if self.state is not LinkState.AWAIT_AUTH:
                self._fail(step, "auth_ok out of turn", int(ix.LinkError.UNEXPECTED_MESSAGE))
                return
            self.state = LinkState.READY
            step.events.append(PeerAuthenticated(self.issuer, msg.heartbeat_ms))
        elif self.state is not LinkState.READY:
            self._fail(step, f"{type(msg).__name__} before auth_ok", int(ix.LinkError.NOT_AUTHENTICATED))
        elif isinstance(msg, ix.RemoteTapAnswer):
            if msg.acquirer == self.own:
                step.events.append(AnswerIn(msg))
        elif isinstance(msg, ix.StandInAdviceAck):
            if msg.acquirer == self.own:
                step.events.append(AckIn(msg))
        elif isinstance(msg, ix.Pong):
            step.events.append(PongIn(msg))

    def _on_hello_ok(self, msg: ix.HelloOk, step: Step) -> None:
        if self.state is not LinkState.AWAIT_HELLO or not self._hello_sent:
            self._fail(step, "hello_ok out of turn", int(ix.LinkError.UNEXPECTED_MESSAGE))
        elif msg.city != self.issuer:
            self._fail(step, f"answered by {msg.city}, expected {self.issuer}", int(ix.LinkError.AUTH_FAILED))
        elif not ix.verify_auth(self._issuer_key, msg.signature, self.issuer, self.own, msg.nonce, self._nonce):
            self._fail(step, f"hello_ok signature is not {self.issuer}'s", int(ix.LinkError.AUTH_FAILED))
        else:
            signature = ix.sign_auth(self._key, self.own, self.issuer, self._nonce, msg.nonce)
            step.out += ix.encode(ix.Auth(signature=signature))
            self.state = LinkState.AWAIT_AUTH

    def _fail(self, step: Step, reason: str, code: int) -> Step:
        # The acquirer has no error message of its own on the link: it just closes.
        step.events.append(Closed(reason, code))
        step.close = True
        self.state = LinkState.CLOSED
        return step

    def send(self, msg: ix.RemoteTap | ix.StandInAdvice | ix.Ping) -> bytes:
        if self.state is not LinkState.READY:
            raise RuntimeError(f"cannot send {type(msg).__name__} in state {self.state.value}")
        if isinstance(msg, ix.RemoteTap | ix.StandInAdvice) and msg.acquirer != self.own:
            raise ValueError(f"acquirer must be {self.own}, got {msg.acquirer}")
        return ix.encode(msg)


__all__ = ["NONCE_BYTES", "AckIn", "AcquirerSide", "AdviceIn", "AnswerIn", "Closed", "ErrorIn", "Event",
           "IssuerSide", "LinkState", "PeerAuthenticated", "PongIn", "Step", "TapIn"]
