"""What ``client.ClientConnection`` reports: its states and the events bytes in turn into."""

from dataclasses import dataclass
from enum import Enum

from .codes import ErrorCode
from .messages import (
    AuthOk,
    Challenge,
    Error,
    OfflineAck,
    Params,
    Pong,
    Result,
    Results,
    ServerMessage,
)


class ClientState(Enum):
    IDLE = "idle"  # nothing sent yet
    AWAIT_CHALLENGE = "await_challenge"  # hello sent
    CHALLENGED = "challenged"  # challenge received; the shell sends auth
    AWAIT_AUTH_OK = "await_auth_ok"  # auth sent: nothing more may be sent until auth_ok
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Challenged:
    """The server's challenge: call ``auth()`` to answer it."""

    challenge: Challenge


@dataclass(frozen=True, slots=True)
class Authenticated:
    """``auth_ok``: the connection is READY."""

    auth_ok: AuthOk


@dataclass(frozen=True, slots=True)
class TapAnswered:
    """The ``result`` of a single ``tap`` sent on this connection."""

    result: Result


@dataclass(frozen=True, slots=True)
class BatchAnswered:
    """The ``results`` of a ``taps`` batch sent on this connection, item i answering tap i."""

    results: Results


@dataclass(frozen=True, slots=True)
class OfflineAnswered:
    """The ``offline_ack`` of an ``offline`` upload sent on this connection (matched by req):
    code i (``codes.OfflineCode``) answers record i; every acknowledged record is durable."""

    ack: OfflineAck


@dataclass(frozen=True, slots=True)
class PongReceived:
    pong: Pong


@dataclass(frozen=True, slots=True)
class ParamsReceived:
    params: Params


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """An ``error`` frame. ``req``/``seq`` name the outstanding request it answers (0: none,
    so every outstanding request is suspect). After a fatal one the connection is closed."""

    error: Error
    fatal: bool
    req: int
    seq: int


@dataclass(frozen=True, slots=True)
class Violation:
    """The server broke the protocol. ``msg`` is the offending message when it decoded (an
    unmatched answer, say: a server bug, or a duplicate on a network that is not TCP).
    Fatal ones closed the connection: reconnect and resend what is unanswered."""

    code: ErrorCode
    message: str
    fatal: bool
    msg: ServerMessage | None = None


Event = (
    Challenged
    | Authenticated
    | TapAnswered
    | BatchAnswered
    | OfflineAnswered
    | PongReceived
    | ParamsReceived
    | ErrorReceived
    | Violation
)
