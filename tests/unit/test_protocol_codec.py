"""Framing and message codec: any chunking, hard limits, and plain-MessagePack interop.

The independent ``msgpack`` package is the peer here: it must read every body we encode as a
plain map, and bodies it packs from plain dicts must decode with our decoders.
"""

import random

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.errors import RemoteProtocolError
from citycard.protocols.codes import ErrorCode
from citycard.protocols.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_BYTES,
    FrameDecoder,
    encode_frame,
)
from citycard.protocols.messages import (
    CLIENT_TAGS,
    MAX_BATCH_TAPS,
    MAX_HOTLIST_ITEMS,
    SERVER_TAGS,
    Auth,
    AuthOk,
    Challenge,
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
    ResultItem,
    Results,
    Tap,
    TapBatch,
    TapItem,
    client_decoder,
    encoder,
    server_decoder,
)

NONCE = bytes(range(16))
MAC = bytes(range(32))
BODIES = [b"\x80", b"\x81\xa1t\xa4ping", bytes(range(256)) * 3, b"x" * 70_000]


def chunk_randomly(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 64)
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


# -- framing -----------------------------------------------------------------------------
def test_frame_header_is_4_byte_big_endian_length() -> None:
    assert HEADER_BYTES == 4
    assert DEFAULT_MAX_FRAME_BYTES == 262_144
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 0x01_02_03)[:4] == b"\x00\x01\x02\x03"


def test_decoder_fed_whole() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(b) for b in BODIES)) == BODIES
    assert decoder.buffered_bytes == 0


def test_decoder_fed_byte_by_byte() -> None:
    decoder = FrameDecoder()
    stream = b"".join(encode_frame(b) for b in BODIES[:3])
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == BODIES[:3]
    assert decoder.buffered_bytes == 0


def test_decoder_in_random_chunks() -> None:
    rng = random.Random(7)
    stream = b"".join(encode_frame(b) for b in BODIES)
    for _ in range(20):
        decoder = FrameDecoder()
        out: list[bytes] = []
        for chunk in chunk_randomly(stream, rng):
            out += decoder.feed(chunk)
        assert out == BODIES


def test_trailing_partial_frame_stays_buffered() -> None:
    decoder = FrameDecoder()
    first, second = encode_frame(b"first"), encode_frame(b"second frame")
    for cut in range(1, len(second)):
        decoder = FrameDecoder()
        assert decoder.feed(first + second[:cut]) == [b"first"]
        assert decoder.buffered_bytes == cut
        assert decoder.feed(second[cut:]) == [b"second frame"]
        assert decoder.buffered_bytes == 0


def test_partial_header_waits() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00") == []
    assert decoder.feed(b"\x00") == []
    assert decoder.feed(b"\x02h") == []
    assert decoder.feed(b"i") == [b"hi"]


def test_many_frames_in_one_chunk() -> None:
    bodies = [i.to_bytes(2, "big") * (i % 7 + 1) for i in range(1, 2001)]
    assert FrameDecoder().feed(b"".join(encode_frame(b) for b in bodies)) == bodies


def test_empty_feed_is_harmless() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered_bytes == 0


def test_oversize_length_rejected_from_the_header_alone() -> None:
    header = (DEFAULT_MAX_FRAME_BYTES + 1).to_bytes(4, "big")
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().feed(header)  # no body bytes sent at all
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_oversize_after_good_frames_and_split_header() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    assert decoder.feed(encode_frame(b"0123456789") + b"\x00\x00") == [b"0123456789"]
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(b"\x00\x0b")
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_frame_of_exactly_the_limit_is_allowed() -> None:
    body = b"z" * DEFAULT_MAX_FRAME_BYTES
    assert FrameDecoder().feed(encode_frame(body)) == [body]
    assert FrameDecoder(max_frame_bytes=5).feed(encode_frame(b"12345")) == [b"12345"]


def test_zero_length_is_bad_frame() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().feed(b"\x00\x00\x00\x00")
    assert info.value.code == ErrorCode.BAD_FRAME
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(encode_frame(b"ok") + b"\x00\x00\x00\x00")
    assert info.value.code == ErrorCode.BAD_FRAME


@settings(max_examples=200, deadline=None, database=None)
@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
)
def test_any_chunking_gives_the_same_frames(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out: list[bytes] = []
    for a, b in zip(points, points[1:], strict=False):
        out += decoder.feed(stream[a:b])
    assert out == bodies
    assert decoder.buffered_bytes == 0


# -- messages as plain MessagePack -------------------------------------------------------
TAP_FIELDS = {"seq": 7, "card": 3_101_000_000_000_017, "time_ms": 1_700_000_000_000, "kind": 1}

CLIENT_SAMPLES: list[tuple[msgspec.Struct, dict[str, object]]] = [
    (
        Hello(terminal_id=1001, nonce=NONCE),
        {"t": "hello", "terminal_id": 1001, "nonce": NONCE, "version": 1},
    ),
    (Auth(mac=MAC), {"t": "auth", "mac": MAC}),
    (
        Tap(seq=7, card=3_101_000_000_000_017, time_ms=1_700_000_000_000, kind=1, route=42),
        {"t": "tap", **TAP_FIELDS, "route": 42, "amount_fen": 0, "bill_class": 0},
    ),
    (
        TapBatch(
            req=9,
            taps=[
                TapItem(seq=8, card=5, time_ms=0, kind=8, amount_fen=1500),
                TapItem(seq=2**32 - 1, card=10**18 - 1, time_ms=2**63 - 1, kind=255, route=2**31 - 1),
            ],
        ),
        {
            "t": "taps",
            "req": 9,
            "taps": [
                {"seq": 8, "card": 5, "time_ms": 0, "kind": 8, "route": 0, "amount_fen": 1500,
                 "bill_class": 0},
                {
                    "seq": 2**32 - 1,
                    "card": 10**18 - 1,
                    "time_ms": 2**63 - 1,
                    "kind": 255,
                    "route": 2**31 - 1,
                    "amount_fen": 0,
                    "bill_class": 0,
                },
            ],
        },
    ),
    (Ping(time_ms=123), {"t": "ping", "time_ms": 123}),
    (
        ParamsRequest(fare_version=3, hotlist_version=4),
        {"t": "params", "fare_version": 3, "hotlist_version": 4, "fares": False},
    ),
    (
        OfflineUpload(req=4, batch_seq=2, mac=MAC, records=[
            OfflineRecordItem(card=5, counter=0xFFFF, amount_fen=2**32 - 1, balance_after_fen=0, type=6,
                              seq=2**32 - 1, when=20261206081500, tac=b"\x01\x02\x03\x04", kind=1, route=12)]),
        {"t": "offline", "req": 4, "batch_seq": 2, "mac": MAC, "records": [
            {"card": 5, "counter": 0xFFFF, "amount_fen": 2**32 - 1, "balance_after_fen": 0, "type": 6,
             "seq": 2**32 - 1, "when": 20261206081500, "tac": b"\x01\x02\x03\x04", "kind": 1, "route": 12}]},
    ),
]

NO_HOTLIST = {"hotlist_to": 0, "hotlist_reset": False, "hotlist_added": [], "hotlist_removed": [],
              "hotlist_more": False, "fare_table": ""}
SERVER_SAMPLES: list[tuple[msgspec.Struct, dict[str, object]]] = [
    (
        Challenge(nonce=NONCE, server_time_ms=1_700_000_000_000),
        {"t": "challenge", "nonce": NONCE, "server_time_ms": 1_700_000_000_000},
    ),
    (
        AuthOk(fare_version=1, hotlist_version=2, max_batch=1000, heartbeat_ms=30_000, server_time_ms=5),
        {
            "t": "auth_ok",
            "fare_version": 1,
            "hotlist_version": 2,
            "max_batch": 1000,
            "heartbeat_ms": 30_000,
            "server_time_ms": 5,
        },
    ),
    (
        Result(seq=7, code=0, fare_fen=182, balance_fen=818, replay=True),
        {"t": "result", "seq": 7, "code": 0, "fare_fen": 182, "balance_fen": 818, "replay": True},
    ),
    (
        Results(
            req=9,
            results=[
                ResultItem(seq=8, code=1, fare_fen=0, balance_fen=100),
                ResultItem(seq=9, code=3, fare_fen=0, balance_fen=-1),
            ],
        ),
        {
            "t": "results",
            "req": 9,
            "results": [
                {"seq": 8, "code": 1, "fare_fen": 0, "balance_fen": 100, "replay": False},
                {"seq": 9, "code": 3, "fare_fen": 0, "balance_fen": -1, "replay": False},
            ],
        },
    ),
    (Pong(time_ms=1, server_time_ms=2), {"t": "pong", "time_ms": 1, "server_time_ms": 2}),
    (
        Params(fare_version=3, hotlist_version=4),
        {"t": "params_info", "fare_version": 3, "hotlist_version": 4, **NO_HOTLIST},
    ),
    (
        Params(fare_version=3, hotlist_version=9, hotlist_to=9, hotlist_added=[5, 10**18 - 1],
               hotlist_removed=[7]),
        {"t": "params_info", "fare_version": 3, "hotlist_version": 9, **NO_HOTLIST, "hotlist_to": 9,
         "hotlist_added": [5, 10**18 - 1], "hotlist_removed": [7]},
    ),
    (
        Error(code=3, message="bad", req=9, seq=0),
        {"t": "error", "code": 3, "message": "bad", "req": 9, "seq": 0},
    ),
    (OfflineAck(req=4, batch_seq=2, codes=[0, 3]), {"t": "offline_ack", "req": 4, "batch_seq": 2, "codes": [0, 3]}),
]

ALL_SAMPLES = CLIENT_SAMPLES + SERVER_SAMPLES


def _sample_id(value: object) -> str:
    return str(value["t"]) if isinstance(value, dict) else type(value).__name__


def test_samples_cover_every_message_type() -> None:
    tags = {plain["t"] for _, plain in ALL_SAMPLES}
    assert tags == CLIENT_TAGS | SERVER_TAGS
    assert not CLIENT_TAGS & SERVER_TAGS


@pytest.mark.parametrize(("msg", "plain"), ALL_SAMPLES, ids=_sample_id)
def test_msgpack_reads_our_bytes_as_plain_maps(msg: msgspec.Struct, plain: dict[str, object]) -> None:
    body = encoder.encode(msg)
    assert msgpack.unpackb(body, raw=False, strict_map_key=True) == plain
    # the frame decodes the same way after framing
    [framed] = FrameDecoder().feed(encode_frame(body))
    assert msgpack.unpackb(framed, raw=False) == plain


@pytest.mark.parametrize(("msg", "plain"), CLIENT_SAMPLES, ids=_sample_id)
def test_plain_msgpack_client_bodies_decode(msg: msgspec.Struct, plain: dict[str, object]) -> None:
    assert client_decoder.decode(msgpack.packb(plain, use_bin_type=True)) == msg
    # key order does not matter, "t" need not be first
    reordered = dict(reversed(list(plain.items())))
    assert client_decoder.decode(msgpack.packb(reordered, use_bin_type=True)) == msg
    # unknown keys are ignored (schemas evolve by appending fields)
    extended = {**plain, "zz_future_field": [1, {"a": b"b"}]}
    assert client_decoder.decode(msgpack.packb(extended, use_bin_type=True)) == msg


@pytest.mark.parametrize(("msg", "plain"), SERVER_SAMPLES, ids=_sample_id)
def test_plain_msgpack_server_bodies_decode(msg: msgspec.Struct, plain: dict[str, object]) -> None:
    assert server_decoder.decode(msgpack.packb(plain, use_bin_type=True)) == msg


def test_fields_with_defaults_may_be_omitted() -> None:
    assert client_decoder.decode(msgpack.packb({"t": "tap", **TAP_FIELDS})) == Tap(**TAP_FIELDS)
    hello = client_decoder.decode(msgpack.packb({"t": "hello", "terminal_id": 1, "nonce": NONCE}))
    assert hello == Hello(terminal_id=1, nonce=NONCE, version=1)
    assert client_decoder.decode(msgpack.packb({"t": "params"})) == ParamsRequest()
    assert server_decoder.decode(msgpack.packb({"t": "error", "code": 1, "message": ""})) == Error(
        code=1, message=""
    )
    # a params_info from a server before hotlist deltas: no hotlist in it
    old = server_decoder.decode(msgpack.packb({"t": "params_info", "fare_version": 1, "hotlist_version": 2}))
    assert old == Params(fare_version=1, hotlist_version=2)
    assert (old.hotlist_to, old.hotlist_reset, old.hotlist_added) == (0, False, [])


def test_largest_params_info_fits_the_frame_limit() -> None:
    worst = Params(fare_version=2**63 - 1, hotlist_version=2**63 - 1, hotlist_to=2**63 - 1, hotlist_reset=True,
                   hotlist_added=[10**18 - 1] * (MAX_HOTLIST_ITEMS // 2),
                   hotlist_removed=[10**18 - 1] * (MAX_HOTLIST_ITEMS // 2), hotlist_more=True)
    assert len(encoder.encode(worst)) <= DEFAULT_MAX_FRAME_BYTES
    too_many = msgpack.packb({"t": "params_info", "fare_version": 1, "hotlist_version": 1,
                              "hotlist_added": [1] * (MAX_HOTLIST_ITEMS + 1)})
    with pytest.raises(msgspec.ValidationError):
        server_decoder.decode(too_many)


def test_any_integer_width_is_accepted() -> None:
    # {"t": "ping", "time_ms": 5} with 5 as uint 64 (cf) and as int 8 (d0)
    for encoded in (b"\xcf" + (5).to_bytes(8, "big"), b"\xd0\x05", b"\xcd\x00\x05"):
        body = b"\x82\xa1t\xa4ping\xa7time_ms" + encoded
        assert client_decoder.decode(body) == Ping(time_ms=5)


def test_bin16_nonce_is_accepted() -> None:
    body = (
        b"\x83\xa1t\xa5hello\xabterminal_id\xcd\x03\xe9\xa5nonce" + b"\xc5\x00\x10" + NONCE
    )
    assert client_decoder.decode(body) == Hello(terminal_id=1001, nonce=NONCE)


def test_largest_batch_fits_the_frame_limit() -> None:
    big = TapItem(
        seq=2**32 - 1, card=10**18 - 1, time_ms=2**63 - 1, kind=255, route=2**31 - 1,
        amount_fen=2**31 - 1,
    )
    body = encoder.encode(TapBatch(req=2**32 - 1, taps=[big] * MAX_BATCH_TAPS))
    assert len(body) <= DEFAULT_MAX_FRAME_BYTES
    answer = Results(
        req=2**32 - 1,
        results=[
            ResultItem(seq=2**32 - 1, code=10, fare_fen=2**31 - 1, balance_fen=-(2**40), replay=True)
        ]
        * MAX_BATCH_TAPS,
    )
    # docs/protocol.md promises a full results answer stays below 60 KiB
    assert len(encoder.encode(answer)) < 60 * 1024


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.integers(1, 2**32 - 1),
    card=st.integers(1, 10**18 - 1),
    time_ms=st.integers(0, 2**63 - 1),
    kind=st.integers(1, 255),
    route=st.integers(0, 2**31 - 1),
    amount_fen=st.integers(0, 2**31 - 1),
    bill_class=st.integers(0, 255),
)
def test_any_valid_tap_round_trips_through_msgpack(
    seq: int, card: int, time_ms: int, kind: int, route: int, amount_fen: int, bill_class: int
) -> None:
    fields = {
        "seq": seq, "card": card, "time_ms": time_ms, "kind": kind, "route": route,
        "amount_fen": amount_fen, "bill_class": bill_class,
    }
    tap = Tap(**fields)
    assert msgpack.unpackb(encoder.encode(tap)) == {"t": "tap", **fields}
    assert client_decoder.decode(msgpack.packb({"t": "tap", **fields})) == tap
    batch = client_decoder.decode(msgpack.packb({"t": "taps", "req": 1, "taps": [fields]}))
    assert batch == TapBatch(req=1, taps=[TapItem(**fields)])
