"""Typed wire messages. Each body is a MessagePack map whose "t" key names the message.

Schemas evolve by appending fields with defaults. Decoders are built once, at import.
"""

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

PROTOCOL_VERSION = 1
NONCE_BYTES = 16
MAC_BYTES = 32
MAX_BATCH_TAPS = 1000
MAX_HOTLIST_ITEMS = 20_000  # cards in one params_info (added + removed): < 190 KB of a 256 KiB frame

TerminalId = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Seq = Annotated[int, Meta(ge=1, le=2**32 - 1)]
CardNo = Annotated[int, Meta(ge=1, le=10**18 - 1)]
TimeMs = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Kind = Annotated[int, Meta(ge=1, le=255)]
Route = Annotated[int, Meta(ge=0, le=2**31 - 1)]
AmountFen = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Nonce = Annotated[bytes, Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
Mac = Annotated[bytes, Meta(min_length=MAC_BYTES, max_length=MAC_BYTES)]
ReqId = Annotated[int, Meta(ge=0, le=2**32 - 1)]
BillClassField = Annotated[int, Meta(ge=0, le=255)]  # medical bills: 1 outpatient, 2 inpatient, 3 pharmacy


class Msg(Struct, tag_field="t", forbid_unknown_fields=False):
    """Base of every message; unknown fields are ignored so newer peers can append fields."""


# -- authentication --------------------------------------------------------------------
class Hello(Msg, tag="hello"):
    terminal_id: TerminalId
    nonce: Nonce
    version: int = PROTOCOL_VERSION


class Challenge(Msg, tag="challenge"):
    nonce: Nonce
    server_time_ms: TimeMs


class Auth(Msg, tag="auth"):
    mac: Mac


class AuthOk(Msg, tag="auth_ok"):
    fare_version: int
    hotlist_version: int
    max_batch: int
    heartbeat_ms: int
    server_time_ms: int


# -- taps --------------------------------------------------------------------------------
class TapItem(Struct, forbid_unknown_fields=False):
    seq: Seq
    card: CardNo
    time_ms: TimeMs
    kind: Kind
    route: Route = 0
    amount_fen: AmountFen = 0
    bill_class: BillClassField = 0


class Tap(Msg, tag="tap"):
    seq: Seq
    card: CardNo
    time_ms: TimeMs
    kind: Kind
    route: Route = 0
    amount_fen: AmountFen = 0
    bill_class: BillClassField = 0


class TapBatch(Msg, tag="taps"):
    req: ReqId
    taps: Annotated[list[TapItem], Meta(min_length=1, max_length=MAX_BATCH_TAPS)]


class ResultItem(Struct):
    seq: int
    code: int
    fare_fen: int
    balance_fen: int
    replay: bool = False


class Result(Msg, tag="result"):
    seq: int
    code: int
    fare_fen: int
    balance_fen: int
    replay: bool = False


class Results(Msg, tag="results"):
    req: int
    results: list[ResultItem]


# -- housekeeping ------------------------------------------------------------------------
class Ping(Msg, tag="ping"):
    time_ms: TimeMs


class Pong(Msg, tag="pong"):
    time_ms: int
    server_time_ms: int


class ParamsRequest(Msg, tag="params"):
    fare_version: int = 0
    hotlist_version: int = 0
    fares: bool = False  # send the fare table if fare_version is not the one in force (11.2)


class Params(Msg, tag="params_info"):
    fare_version: int
    hotlist_version: int
    # The hotlist as a delta from the version the terminal sent (docs/protocol.md, 11.1): clear
    # the list if reset, add, remove, then hold hotlist_to; more: ask again. hotlist_to 0
    # without reset: no hotlist in this answer, keep what you hold.
    hotlist_to: int = 0
    hotlist_reset: bool = False
    hotlist_added: Annotated[list[CardNo], Meta(max_length=MAX_HOTLIST_ITEMS)] = []
    hotlist_removed: Annotated[list[CardNo], Meta(max_length=MAX_HOTLIST_ITEMS)] = []
    hotlist_more: bool = False
    # The fare table in force (its TOML text), when asked for and the terminal's is another
    # version (11.2). An answer with a table carries no hotlist: ask again for that.
    fare_table: str = ""


class Error(Msg, tag="error"):
    code: int
    message: str
    req: int = 0
    seq: int = 0


# -- offline uploads (docs/protocol.md, section 15) --------------------------------------
MAX_OFFLINE_RECORDS = 1000
TAC_BYTES = 4
PurseFen = Annotated[int, Meta(ge=0, le=2**32 - 1)]  # the card's purse: 4 bytes on the card
OfflineCounter = Annotated[int, Meta(ge=0, le=0xFFFF)]
TerminalSeq = Annotated[int, Meta(ge=0, le=2**32 - 1)]  # the SAM's transaction seq
TxType = Annotated[int, Meta(ge=0, le=255)]
WhenDigits = Annotated[int, Meta(ge=10000101000000, le=99991231235959)]  # YYYYMMDDhhmmss
Tac = Annotated[bytes, Meta(min_length=TAC_BYTES, max_length=TAC_BYTES)]
BatchSeq = Annotated[int, Meta(ge=1, le=2**63 - 1)]
OfflineKind = Annotated[int, Meta(ge=0, le=255)]


class OfflineRecordItem(Struct, forbid_unknown_fields=False, gc=False):
    """One purchase the card made offline, as the validator stored it (domain.offline.OfflineRecord).
    Untracked by the garbage collector (only ints and bytes: no cycle): tens of thousands are
    in flight at once in the gateway."""

    card: CardNo
    counter: OfflineCounter  # the card's offline counter before this purchase: the record's key
    amount_fen: PurseFen
    balance_after_fen: PurseFen  # the purse after the debit, as the card reported it
    type: TxType  # 06 purchase, 09 compound (transit) purchase
    seq: TerminalSeq  # the terminal's (SAM's) transaction seq
    when: WhenDigits  # the validator's local date and time the TAC covers, YYYYMMDDhhmmss
    tac: Tac  # 4 bytes, by the card
    kind: OfflineKind = 0  # the tap kind (bus, metro, ...) the fare was for
    route: Route = 0


class OfflineUpload(Msg, tag="offline"):
    """A batch of offline records, signed by the terminal's SAM (domain.offline.batch_mac with
    the terminal's batch key over terminal id, batch_seq and the records in order)."""

    req: ReqId
    batch_seq: BatchSeq  # the terminal's upload batch number, monotonic
    records: Annotated[list[OfflineRecordItem], Meta(min_length=1, max_length=MAX_OFFLINE_RECORDS)]
    mac: Mac


class OfflineAck(Msg, tag="offline_ack"):
    """The host's durable decision on each record of an ``offline`` batch, in order: one
    ``codes.OfflineCode`` per record. Sent only after the decisions are committed."""

    req: int
    batch_seq: int
    codes: list[int]


ClientMessage = Hello | Auth | Tap | TapBatch | Ping | ParamsRequest | OfflineUpload
ServerMessage = Challenge | AuthOk | Result | Results | Pong | Params | Error | OfflineAck
AnyMessage = ClientMessage | ServerMessage

CLIENT_TAGS = frozenset(("hello", "auth", "tap", "taps", "ping", "params", "offline"))
SERVER_TAGS = frozenset(("challenge", "auth_ok", "result", "results", "pong", "params_info", "error",
                         "offline_ack"))

client_decoder = msgspec.msgpack.Decoder(ClientMessage)
server_decoder = msgspec.msgpack.Decoder(ServerMessage)
encoder = msgspec.msgpack.Encoder()
