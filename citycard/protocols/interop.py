"""The inter-platform link, pure (docs/interop.md, "The online link").

The acquirer (the city whose terminal saw a visitor's card) opens one TCP connection to the
issuer's platform and sends the tap there; the issuer decides it on the card's account and
answers. Frames are the terminal protocol's (``frames.py``: 4-byte big-endian length, then a
MessagePack map whose "t" key names the message); the messages are these. Both platforms
authenticate with their Ed25519 link keys, checked against the issuer registry.
"""

from enum import IntEnum
from typing import Annotated

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from msgspec import Meta, Struct

from ..domain.issuers import CODE_PATTERN
from ..errors import RemoteProtocolError
from .frames import FrameDecoder, encode_frame
from .messages import (
    NONCE_BYTES,
    AmountFen,
    BillClassField,
    CardNo,
    Kind,
    Nonce,
    Route,
    Seq,
    TerminalId,
    TimeMs,
)

LINK_VERSION = 1
SIGNATURE_BYTES = 64
MAX_ADVICE_ITEMS = 500  # advice items per message: < 40 KB, far under a frame
MAX_MESSAGE_CHARS = 200
MAX_LINK_FRAME_BYTES = 64 * 1024
AUTH_LABEL = b"citycard/interop-auth/v1"

City = Annotated[str, Meta(pattern=CODE_PATTERN)]
Signature = Annotated[bytes, Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]
Code = Annotated[int, Meta(ge=0, le=0xFFFF)]
Fen = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Balance = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]  # an account may be below 0 after advice


class LinkError(IntEnum):
    """Codes of the link's ``error`` message. Wire-stable: append only. Tap outcomes are
    ``domain.results.Result`` codes, as on the terminal protocol."""

    BAD_MESSAGE = 1  # not MessagePack, a field out of bounds, or no such message; connection closed
    UNSUPPORTED_VERSION = 2  # connection closed
    UNKNOWN_CITY = 3  # hello from a city not in the registry; connection closed
    AUTH_FAILED = 4  # a signature that does not verify; connection closed
    NOT_AUTHENTICATED = 5  # a tap, advice or ping before auth_ok; connection closed
    WRONG_ACQUIRER = 6  # a tap or advice naming another acquirer than the authenticated one
    NOT_OUR_CARD = 7  # a tap or advice for a card this issuer did not issue
    UNEXPECTED_MESSAGE = 8  # a valid message in the wrong state (a second hello)
    INTERNAL = 9  # the issuer failed; nothing was decided: retry with the same key
    BAD_FRAME = 10  # a frame of length 0 or over the link's limit; connection closed


class Msg(Struct, tag_field="t", forbid_unknown_fields=False):
    """Base of every link message; unknown fields are ignored so newer peers can append fields."""


# -- authentication: hello (A->I), hello_ok (I->A), auth (A->I), auth_ok (I->A) -------------
class Hello(Msg, tag="hello"):
    city: City  # the acquirer opening the connection
    nonce: Nonce
    version: Annotated[int, Meta(ge=1, le=255)] = LINK_VERSION


class HelloOk(Msg, tag="hello_ok"):
    city: City  # the issuer answering
    nonce: Nonce
    signature: Signature  # the issuer's: auth_input(issuer, acquirer, issuer nonce, acquirer nonce)


class Auth(Msg, tag="auth"):
    signature: Signature  # the acquirer's: auth_input(acquirer, issuer, acquirer nonce, issuer nonce)


class AuthOk(Msg, tag="auth_ok"):
    server_time_ms: TimeMs
    heartbeat_ms: Annotated[int, Meta(ge=1000, le=600_000)]


# -- online taps -------------------------------------------------------------------------
class RemoteTap(Msg, tag="tap"):
    """One tap of the issuer's card on the acquirer's terminal; (acquirer, terminal_id, seq)
    is its idempotency key, the terminal's own."""

    acquirer: City
    terminal_id: TerminalId
    seq: Seq
    card: CardNo
    time_ms: TimeMs
    kind: Kind
    amount_fen: AmountFen  # to debit, priced by the acquirer (its tariff or the merchant's amount)
    route: Route = 0
    bill_class: BillClassField = 0


class RemoteTapAnswer(Msg, tag="tap_answer"):
    """The issuer's durable decision on a ``tap``: sent only once it is committed."""

    acquirer: City
    terminal_id: TerminalId
    seq: Seq
    code: Code  # domain.results.Result
    fare_fen: Fen  # debited (0 unless code is OK)
    balance_fen: Balance  # the account after it
    replay: bool = False  # the key was decided before: this is that decision again


# -- stand-in advice ---------------------------------------------------------------------
class AdviceItem(Struct, forbid_unknown_fields=False):
    terminal_id: TerminalId
    seq: Seq
    card: CardNo
    amount_fen: AmountFen
    time_ms: TimeMs
    kind: Kind
    route: Route = 0
    # A void: the tap went to the issuer unanswered (outcome unknown there) and the acquirer's
    # terminal was then refused. The issuer holds the key refused for good and credits back
    # what it had charged for it (AdviceDecision.VOIDED / REVERSED). False: a stand-in approval.
    void: bool = False


class StandInAdvice(Msg, tag="advice"):
    """Taps the acquirer approved in stand-in while the issuer was unreachable."""

    acquirer: City
    req: Annotated[int, Meta(ge=0, le=2**32 - 1)]
    items: Annotated[list[AdviceItem], Meta(min_length=1, max_length=MAX_ADVICE_ITEMS)]


class AdviceDecision(IntEnum):
    """Wire-stable: append only."""

    ACCEPTED = 0  # the issuer debited the card: it owes the acquirer the amount
    DECLINED = 1  # the issuer refuses the debit (code says why): the acquirer keeps the loss
    UNDECIDED = 2  # not decided now (code: BUSY, RETRY, SEQ_TOO_OLD): send the item again later
    VOIDED = 3  # a void: the key is held refused (code), nothing was or will be charged
    REVERSED = 4  # a void the issuer had charged: it credited the amount back; held refused


MAX_DECISION = int(max(AdviceDecision))


class AdviceAckItem(Struct, forbid_unknown_fields=False):
    terminal_id: TerminalId
    seq: Seq
    decision: Annotated[int, Meta(ge=0, le=MAX_DECISION)]  # AdviceDecision
    code: Code  # domain.results.Result: OK when accepted, the reason when declined
    replay: bool = False


class StandInAdviceAck(Msg, tag="advice_ack"):
    """The issuer's durable decisions on an ``advice`` message's items, in its order."""

    acquirer: City
    req: Annotated[int, Meta(ge=0, le=2**32 - 1)]
    items: Annotated[list[AdviceAckItem], Meta(min_length=1, max_length=MAX_ADVICE_ITEMS)]


# -- housekeeping ------------------------------------------------------------------------
class Ping(Msg, tag="ping"):
    time_ms: TimeMs


class Pong(Msg, tag="pong"):
    time_ms: TimeMs
    server_time_ms: TimeMs


class Error(Msg, tag="error"):
    code: Code  # LinkError
    message: Annotated[str, Meta(max_length=MAX_MESSAGE_CHARS)] = ""
    # The tap the error is about (INTERNAL for one tap): its waiter hears "no answer" at once
    # instead of waiting out its timeout. 0: no tap named.
    terminal_id: Annotated[int, Meta(ge=0, le=2**31 - 1)] = 0
    seq: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 0


AcquirerMessage = Hello | Auth | RemoteTap | StandInAdvice | Ping
IssuerMessage = HelloOk | AuthOk | RemoteTapAnswer | StandInAdviceAck | Pong | Error
LinkMessage = AcquirerMessage | IssuerMessage

_encoder = msgspec.msgpack.Encoder()
_from_acquirer = msgspec.msgpack.Decoder(AcquirerMessage)
_from_issuer = msgspec.msgpack.Decoder(IssuerMessage)


def encode(msg: LinkMessage) -> bytes:
    """The whole frame of ``msg``: length prefix and MessagePack body."""
    return encode_frame(_encoder.encode(msg))


def decode_from_acquirer(body: bytes) -> AcquirerMessage:
    """An issuer's view of one frame body; RemoteProtocolError(BAD_MESSAGE) saying what is wrong
    (msgspec names the field: ``$.items[3].seq``)."""
    try:
        return _from_acquirer.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is one
        raise RemoteProtocolError(f"bad link message from the acquirer: {exc}", LinkError.BAD_MESSAGE) from None


def decode_from_issuer(body: bytes) -> IssuerMessage:
    try:
        return _from_issuer.decode(body)
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(f"bad link message from the issuer: {exc}", LinkError.BAD_MESSAGE) from None


class LinkReader:
    """Bytes in any chunking to whole messages, for one side of a link connection."""

    __slots__ = ("_frames", "_issuer_side")

    def __init__(self, *, issuer_side: bool, max_frame_bytes: int = MAX_LINK_FRAME_BYTES) -> None:
        self._frames = FrameDecoder(max_frame_bytes)
        self._issuer_side = issuer_side  # True: we are the issuer, reading an acquirer's messages

    def feed(self, data: bytes) -> list[LinkMessage]:
        try:
            bodies = self._frames.feed(data)
        except RemoteProtocolError as exc:  # the frame layer's codes are the terminal protocol's
            raise RemoteProtocolError(str(exc), LinkError.BAD_FRAME) from None
        if self._issuer_side:
            return [decode_from_acquirer(body) for body in bodies]
        return [decode_from_issuer(body) for body in bodies]


# -- the signatures of hello_ok and auth -------------------------------------------------
def auth_input(signer: str, peer: str, signer_nonce: bytes, peer_nonce: bytes) -> bytes:
    """What a platform signs: AUTH_LABEL || len(signer) || signer || len(peer) || peer ||
    peer_nonce || signer_nonce (codes in ASCII, lengths one byte). Naming the signer first
    binds the signature to its role, so one side's signature cannot be reflected as the other's."""
    if len(signer_nonce) != NONCE_BYTES or len(peer_nonce) != NONCE_BYTES:
        raise ValueError(f"nonces must be {NONCE_BYTES} bytes")
    s, p = signer.encode("ascii"), peer.encode("ascii")
    return AUTH_LABEL + bytes([len(s)]) + s + bytes([len(p)]) + p + peer_nonce + signer_nonce


def sign_auth(key: Ed25519PrivateKey, signer: str, peer: str, signer_nonce: bytes, peer_nonce: bytes) -> bytes:
    return key.sign(auth_input(signer, peer, signer_nonce, peer_nonce))


def verify_auth(public_key: bytes, signature: bytes, signer: str, peer: str, signer_nonce: bytes,
                peer_nonce: bytes) -> bool:
    """Whether ``signature`` is ``signer``'s (its registered link key) over this handshake."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, auth_input(signer, peer, signer_nonce, peer_nonce))
    except (InvalidSignature, ValueError):
        return False
    return True


__all__ = ["AUTH_LABEL", "LINK_VERSION", "MAX_ADVICE_ITEMS", "MAX_LINK_FRAME_BYTES", "SIGNATURE_BYTES",
           "AcquirerMessage", "AdviceAckItem", "AdviceDecision", "AdviceItem", "Auth", "AuthOk", "Error", "Hello",
           "HelloOk", "IssuerMessage", "LinkError", "LinkMessage", "LinkReader", "Ping", "Pong", "RemoteTap",
           "RemoteTapAnswer", "StandInAdvice", "StandInAdviceAck", "auth_input", "decode_from_acquirer",
           "decode_from_issuer", "encode", "sign_auth", "verify_auth"]
