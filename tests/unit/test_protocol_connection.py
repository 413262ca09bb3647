"""ServerConnection: the sans-I/O state machine, its errors, and a fuzz test that nothing a
peer sends can make it raise."""

from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.errors import LocalProtocolError
from citycard.protocols.auth import auth_mac, terminal_key, verify_mac
from citycard.protocols.codes import FATAL, ErrorCode
from citycard.protocols.connection import (
    MAX_BAD_MESSAGES,
    PREAUTH_MAX_FRAME_BYTES,
    AuthReceived,
    HelloReceived,
    ParamsRequested,
    PingReceived,
    ServerConnection,
    State,
    TapsReceived,
    Violation,
)
from citycard.protocols.frames import FrameDecoder, encode_frame
from citycard.protocols.messages import (
    CLIENT_TAGS,
    MAX_BATCH_TAPS,
    PROTOCOL_VERSION,
    SERVER_TAGS,
    Auth,
    AuthOk,
    Challenge,
    Error,
    Hello,
    ParamsRequest,
    Ping,
    Pong,
    Result,
    Tap,
    TapBatch,
    TapItem,
    server_decoder,
)
from tests.support.terminal import encode as frame  # a message, as the product encodes it
from tests.support.terminal import frame as plain  # an object, packed by the independent msgpack

MASTER = bytes(range(32))
TID = 1001
T_NONCE = bytes(range(0xA0, 0xB0))
S_NONCE = bytes(range(0xB0, 0xC0))
NOW_MS = 1_700_000_000_000
AUTH_OK = AuthOk(fare_version=1, hotlist_version=1, max_batch=1000, heartbeat_ms=30_000, server_time_ms=NOW_MS)
TAP = {"seq": 1, "card": 3_101_000_000_000_017, "time_ms": NOW_MS, "kind": 1, "route": 42}


def decode_server(data: bytes) -> list[Any]:
    return [server_decoder.decode(body) for body in FrameDecoder().feed(data)]


def the_violation(events: list[Any]) -> Violation:
    [event] = events
    assert isinstance(event, Violation)
    [err] = decode_server(event.reply)
    assert (err.code, err.message) == (int(event.code), event.message)  # req and seq: where readable
    assert event.fatal == (event.code in FATAL)
    return event


def ready() -> ServerConnection:
    conn = ServerConnection()
    [hello] = conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE)))
    assert isinstance(hello, HelloReceived)
    conn.challenge(S_NONCE, NOW_MS)
    mac = auth_mac(terminal_key(MASTER, TID), TID, T_NONCE, S_NONCE)
    [auth] = conn.receive_data(frame(Auth(mac=mac)))
    assert isinstance(auth, AuthReceived)
    conn.accept(AUTH_OK)
    assert conn.state is State.READY
    return conn


# -- happy path --------------------------------------------------------------------------
def test_full_happy_path() -> None:
    conn = ServerConnection()
    assert conn.state is State.AWAIT_HELLO

    assert conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE))) == [
        HelloReceived(TID, T_NONCE)
    ]
    assert conn.terminal_id == TID
    [challenge] = decode_server(conn.challenge(S_NONCE, NOW_MS))
    assert challenge == Challenge(nonce=S_NONCE, server_time_ms=NOW_MS)
    assert conn.state is State.AWAIT_AUTH

    key = terminal_key(MASTER, TID)
    mac = auth_mac(key, TID, T_NONCE, challenge.nonce)
    [auth] = conn.receive_data(frame(Auth(mac=mac)))
    assert auth == AuthReceived(TID, T_NONCE, S_NONCE, mac)
    assert conn.state is State.VERIFYING
    assert verify_mac(key, auth.terminal_id, auth.terminal_nonce, auth.server_nonce, auth.mac)
    assert not verify_mac(terminal_key(MASTER, TID + 1), TID, T_NONCE, S_NONCE, auth.mac)

    assert decode_server(conn.accept(AUTH_OK)) == [AUTH_OK]
    assert conn.state is State.READY

    tap = Tap(**TAP)
    batch = TapBatch(req=7, taps=[TapItem(**{**TAP, "seq": 2}), TapItem(**{**TAP, "seq": 3})])
    pipelined = (
        frame(tap) + frame(batch) + frame(Ping(time_ms=5)) + frame(ParamsRequest(fare_version=1))
    )
    events = conn.receive_data(pipelined)
    assert events == [
        TapsReceived(0, [tap], True),
        TapsReceived(7, batch.taps, False),
        PingReceived(5),
        ParamsRequested(1, 0),
    ]
    assert conn.bad_messages == 0

    out = conn.send(Result(seq=1, code=0, fare_fen=182, balance_fen=818))
    out += conn.send(Pong(time_ms=5, server_time_ms=NOW_MS))
    assert [type(m) for m in decode_server(out)] == [Result, Pong]


def test_pipelined_stream_byte_by_byte_gives_the_same_events() -> None:
    stream = frame(Tap(**TAP)) + frame(Ping(time_ms=5)) + plain({"t": "params"})
    whole = ready().receive_data(stream)
    conn = ready()
    trickled: list[Any] = []
    for i in range(len(stream)):
        trickled += conn.receive_data(stream[i : i + 1])
    assert trickled == whole
    assert len(whole) == 3


def test_plain_msgpack_client_is_understood() -> None:
    conn = ServerConnection()
    [hello] = conn.receive_data(plain({"nonce": T_NONCE, "terminal_id": TID, "t": "hello"}))
    assert hello == HelloReceived(TID, T_NONCE)


# -- wrong order -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "msg", [Tap(**TAP), TapBatch(req=1, taps=[TapItem(**TAP)]), Ping(time_ms=1), ParamsRequest()]
)
def test_requests_before_auth_are_not_authenticated(msg: msgspec.Struct) -> None:
    conn = ServerConnection()
    v = the_violation(conn.receive_data(frame(msg)))
    assert v.code == ErrorCode.NOT_AUTHENTICATED and not v.fatal
    assert conn.state is State.AWAIT_HELLO

    conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE)))
    conn.challenge(S_NONCE, NOW_MS)
    v = the_violation(conn.receive_data(frame(msg)))
    assert v.code == ErrorCode.NOT_AUTHENTICATED
    assert conn.state is State.AWAIT_AUTH

    conn.receive_data(frame(Auth(mac=bytes(32))))
    v = the_violation(conn.receive_data(frame(msg)))  # between auth and auth_ok
    assert v.code == ErrorCode.NOT_AUTHENTICATED
    assert conn.state is State.VERIFYING
    assert conn.bad_messages == 3


def test_auth_before_hello_is_unexpected() -> None:
    conn = ServerConnection()
    v = the_violation(conn.receive_data(frame(Auth(mac=bytes(32)))))
    assert v.code == ErrorCode.UNEXPECTED_MESSAGE and not v.fatal


def test_second_hello_before_challenge_is_unexpected() -> None:
    conn = ServerConnection()
    events = conn.receive_data(
        frame(Hello(terminal_id=TID, nonce=T_NONCE)) + frame(Hello(terminal_id=2002, nonce=S_NONCE))
    )
    assert events[0] == HelloReceived(TID, T_NONCE)
    assert the_violation(events[1:]).code == ErrorCode.UNEXPECTED_MESSAGE
    assert conn.terminal_id == TID
    conn.challenge(S_NONCE, NOW_MS)  # the shell can still answer the first hello
    assert conn.state is State.AWAIT_AUTH


@pytest.mark.parametrize(
    "msg", [Hello(terminal_id=TID, nonce=T_NONCE), Auth(mac=bytes(32))], ids=["hello", "auth"]
)
def test_handshake_messages_when_ready_are_unexpected(msg: msgspec.Struct) -> None:
    conn = ready()
    v = the_violation(conn.receive_data(frame(msg)))
    assert v.code == ErrorCode.UNEXPECTED_MESSAGE and not v.fatal
    assert conn.state is State.READY


def test_hello_in_await_auth_is_unexpected() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE)))
    conn.challenge(S_NONCE, NOW_MS)
    v = the_violation(conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE))))
    assert v.code == ErrorCode.UNEXPECTED_MESSAGE


def test_local_misuse_raises_local_protocol_error() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.challenge(S_NONCE, NOW_MS)  # no hello yet
    with pytest.raises(LocalProtocolError):
        conn.accept(AUTH_OK)  # no auth yet
    conn.close()
    with pytest.raises(LocalProtocolError):
        conn.send(Pong(time_ms=1, server_time_ms=2))
    # an error may still be sent on the way out
    assert decode_server(conn.send(Error(code=14, message="x")))[0].code == 14


def test_reject_sends_error_and_closes() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE)))
    conn.challenge(S_NONCE, NOW_MS)
    conn.receive_data(frame(Auth(mac=bytes(32))))
    [err] = decode_server(conn.reject(ErrorCode.AUTH_FAILED, "wrong MAC"))
    assert err == Error(code=ErrorCode.AUTH_FAILED, message="wrong MAC")
    assert conn.state is State.CLOSED
    assert conn.receive_data(frame(Tap(**TAP))) == []


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "obj",
    [
        {"t": "bogus"},
        {"t": "result", "seq": 1, "code": 0, "fare_fen": 0, "balance_fen": 0},  # server tag
        {"seq": 1},  # no "t"
        {"t": 5},
        {"t": None},
        {"t": b"tap"},
        {"t": [1, 2]},  # unhashable tag
        {"t": {"a": 1}},
        {"t": "x" * 100_000},
    ],
    ids=repr,
)
def test_unknown_message(obj: Any) -> None:
    conn = ready()
    v = the_violation(conn.receive_data(plain(obj)))
    assert v.code == ErrorCode.UNKNOWN_MESSAGE and not v.fatal
    assert len(v.reply) < 1024  # the reply never echoes a huge tag
    assert conn.state is State.READY


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used byte
        b"\xff\xfe\xfd\xfc",
        b"\x82\xa1t\xa4ping",  # truncated map
        msgpack.packb({"t": "ping", "time_ms": 1}) + b"\x00",  # trailing bytes
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb("ping"),
        b"\xd6\xff\x00\x00\x00\x01",  # a timestamp ext, not a map
        b"\xc7\x03\xff\x00\x00\x00",  # a malformed timestamp ext
        b"\x91" * 100_000 + b"\x01",  # nested too deeply
        b"\x82\xa1t\xa4ping\xa1x" + b"\x91" * 100_000 + b"\x01",  # deep unknown field
    ],
    ids=lambda b: b[:12].hex(),
)
def test_garbage_is_bad_message(body: bytes) -> None:
    conn = ready()
    v = the_violation(conn.receive_data(encode_frame(body)))
    assert v.code == ErrorCode.BAD_MESSAGE and not v.fatal
    assert conn.state is State.READY


def batch(n: int) -> dict[str, Any]:
    return {"t": "taps", "req": 1, "taps": [{**TAP, "seq": i + 1} for i in range(n)]}


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "tap", **TAP, "seq": -1},
        {"t": "tap", **TAP, "seq": 0},
        {"t": "tap", **TAP, "seq": 2**32},
        {"t": "tap", **TAP, "seq": 1.0},
        {"t": "tap", **TAP, "seq": "1"},
        {"t": "tap", **TAP, "seq": None},
        {"t": "tap", **TAP, "card": 0},
        {"t": "tap", **TAP, "card": 10**18},
        {"t": "tap", **TAP, "card": True},
        {"t": "tap", **TAP, "time_ms": -1},
        {"t": "tap", **TAP, "kind": 0},
        {"t": "tap", **TAP, "kind": 256},
        {"t": "tap", **TAP, "route": -1},
        {"t": "tap", **TAP, "amount_fen": 2**31},
        {"t": "tap", "seq": 1, "card": 5, "kind": 1},  # time_ms missing
        {"t": "taps", "req": -1, "taps": [TAP]},
        {"t": "taps", "req": 1, "taps": []},
        {"t": "taps", "req": 1, "taps": TAP},
        {"t": "taps", "req": 1, "taps": [{**TAP, "seq": -5}]},
        batch(MAX_BATCH_TAPS + 1),
        {"t": "ping", "time_ms": "soon"},
        {"t": "params", "fare_version": [1]},
    ],
    ids=lambda o: f"{o['t']}:{sorted(o.items())!r:.60}",
)
def test_schema_violations_when_ready(obj: dict[str, Any]) -> None:
    conn = ready()
    v = the_violation(conn.receive_data(plain(obj)))
    assert v.code == ErrorCode.BAD_MESSAGE and not v.fatal
    assert conn.state is State.READY


def test_largest_batch_is_accepted() -> None:
    [event] = ready().receive_data(plain(batch(MAX_BATCH_TAPS)))
    assert isinstance(event, TapsReceived) and len(event.taps) == MAX_BATCH_TAPS


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "hello", "terminal_id": TID, "nonce": T_NONCE[:15]},
        {"t": "hello", "terminal_id": TID, "nonce": T_NONCE + b"\x00"},
        {"t": "hello", "terminal_id": TID, "nonce": T_NONCE.hex()[:16]},  # str, not bin
        {"t": "hello", "terminal_id": 0, "nonce": T_NONCE},
        {"t": "hello", "terminal_id": 2**31, "nonce": T_NONCE},
        {"t": "hello", "terminal_id": TID, "nonce": T_NONCE, "version": "1"},
    ],
    ids=lambda o: f"{sorted(o.items())!r:.70}",
)
def test_schema_violations_in_hello(obj: dict[str, Any]) -> None:
    conn = ServerConnection()
    v = the_violation(conn.receive_data(plain(obj)))
    assert v.code == ErrorCode.BAD_MESSAGE and not v.fatal
    assert conn.state is State.AWAIT_HELLO and conn.terminal_id == 0


@pytest.mark.parametrize("mac", [bytes(31), bytes(33), b""])
def test_mac_of_wrong_length(mac: bytes) -> None:
    conn = ServerConnection()
    conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE)))
    conn.challenge(S_NONCE, NOW_MS)
    v = the_violation(conn.receive_data(plain({"t": "auth", "mac": mac})))
    assert v.code == ErrorCode.BAD_MESSAGE
    assert conn.state is State.AWAIT_AUTH


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version_is_fatal(version: int) -> None:
    conn = ServerConnection()
    v = the_violation(conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE, version=version))))
    assert v.code == ErrorCode.UNSUPPORTED_VERSION and v.fatal
    assert conn.state is State.CLOSED
    assert conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE))) == []


def test_too_many_bad_messages_is_fatal() -> None:
    conn = ready()
    for i in range(MAX_BAD_MESSAGES):
        v = the_violation(conn.receive_data(plain({"t": "nope"})))
        assert v.code == ErrorCode.UNKNOWN_MESSAGE and not v.fatal, i
    # a good message in between neither counts nor resets the count
    assert len(conn.receive_data(frame(Ping(time_ms=1)))) == 1
    v = the_violation(conn.receive_data(encode_frame(b"\xc1")))
    assert v.code == ErrorCode.TOO_MANY_ERRORS and v.fatal
    assert conn.state is State.CLOSED
    assert conn.receive_data(frame(Tap(**TAP))) == []


def test_processing_stops_at_a_fatal_error_in_one_chunk() -> None:
    conn = ready()
    events = conn.receive_data(plain({"t": "nope"}) * (MAX_BAD_MESSAGES + 5) + frame(Tap(**TAP)))
    assert len(events) == MAX_BAD_MESSAGES + 1
    assert events[-1].code == ErrorCode.TOO_MANY_ERRORS


def test_oversize_frame_is_fatal_from_the_header() -> None:
    conn = ready()
    v = the_violation(conn.receive_data((262_145).to_bytes(4, "big")))
    assert v.code == ErrorCode.FRAME_TOO_LARGE and v.fatal
    assert conn.state is State.CLOSED
    assert conn.receive_data(b"\x00" * 100) == []


def test_configured_frame_limit() -> None:
    conn = ServerConnection(max_frame_bytes=64)
    v = the_violation(conn.receive_data(plain({"t": "hello", "pad": "x" * 100})))
    assert v.code == ErrorCode.FRAME_TOO_LARGE and v.fatal


# -- the pre-authentication frame limit (docs/reliability.md, F5) ---------------------------
LONGEST_HELLO = Hello(terminal_id=2**31 - 1, nonce=b"\xff" * 16, version=PROTOCOL_VERSION)
LONGEST_AUTH = Auth(mac=b"\xff" * 32)


def awaiting_auth() -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE)))
    conn.challenge(S_NONCE, NOW_MS)
    return conn


@pytest.mark.parametrize("make", [ServerConnection, awaiting_auth], ids=["await_hello", "await_auth"])
def test_large_frame_before_ready_is_refused_from_the_header(make: Any) -> None:
    conn = make()
    v = the_violation(conn.receive_data((PREAUTH_MAX_FRAME_BYTES + 1).to_bytes(4, "big")))  # no body yet
    assert v.code == ErrorCode.FRAME_TOO_LARGE and v.fatal
    assert "before authentication" in v.message
    assert conn.state is State.CLOSED
    assert conn.receive_data(b"\x90" * PREAUTH_MAX_FRAME_BYTES) == []


def test_large_frame_in_verifying_is_refused() -> None:
    conn = awaiting_auth()
    conn.receive_data(frame(Auth(mac=bytes(32))))
    assert conn.state is State.VERIFYING
    v = the_violation(conn.receive_data(plain(batch(50))))
    assert v.code == ErrorCode.FRAME_TOO_LARGE and v.fatal
    assert conn.state is State.CLOSED


def test_longest_hello_and_auth_fit_the_preauth_limit_with_margin() -> None:
    for msg in (LONGEST_HELLO, LONGEST_AUTH):
        assert len(frame(msg)) * 8 < PREAUTH_MAX_FRAME_BYTES, msg  # room for appended fields
    conn = ServerConnection()
    assert conn.receive_data(frame(LONGEST_HELLO)) == [HelloReceived(2**31 - 1, b"\xff" * 16)]
    conn.challenge(S_NONCE, NOW_MS)
    [auth] = conn.receive_data(frame(LONGEST_AUTH))
    assert isinstance(auth, AuthReceived) and conn.state is State.VERIFYING


def test_hello_of_exactly_the_preauth_limit_is_accepted() -> None:
    """A newer terminal's hello with appended fields, padded to the limit, still passes."""
    obj = {"t": "hello", "terminal_id": TID, "nonce": T_NONCE, "pad": ""}
    obj["pad"] = "x" * (PREAUTH_MAX_FRAME_BYTES - len(pack(obj)) - 2)  # str16 header: 3 bytes, not 1
    assert len(pack(obj)) == PREAUTH_MAX_FRAME_BYTES
    assert ServerConnection().receive_data(plain(obj)) == [HelloReceived(TID, T_NONCE)]


def test_preauth_limit_never_exceeds_the_configured_limit() -> None:
    conn = ServerConnection(max_frame_bytes=64, preauth_max_frame_bytes=4096)
    v = the_violation(conn.receive_data((65).to_bytes(4, "big")))
    assert v.code == ErrorCode.FRAME_TOO_LARGE


def test_after_ready_the_full_limit_applies() -> None:
    conn = ready()
    data = plain(batch(50))
    assert len(data) > PREAUTH_MAX_FRAME_BYTES
    [event] = conn.receive_data(data)
    assert isinstance(event, TapsReceived) and len(event.taps) == 50
    v = the_violation(conn.receive_data((262_145).to_bytes(4, "big")))
    assert v.code == ErrorCode.FRAME_TOO_LARGE and "before" not in v.message


def test_zero_length_frame_is_fatal() -> None:
    conn = ServerConnection()
    v = the_violation(conn.receive_data(b"\x00\x00\x00\x00"))
    assert v.code == ErrorCode.BAD_FRAME and v.fatal
    assert conn.state is State.CLOSED


def test_every_fatal_code_closes() -> None:
    assert {
        ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.AUTH_FAILED,
        ErrorCode.UNKNOWN_TERMINAL, ErrorCode.TERMINAL_DISABLED, ErrorCode.AUTH_REPLAY,
        ErrorCode.UNSUPPORTED_VERSION, ErrorCode.TOO_MANY_ERRORS, ErrorCode.AUTH_TIMEOUT,
    } == FATAL


# -- fuzzing -----------------------------------------------------------------------------
FIELD_NAMES = ["seq", "card", "time_ms", "kind", "route", "amount_fen", "req", "taps", "nonce",
               "mac", "terminal_id", "version", "fare_version", "hotlist_version", "code"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.binary(max_size=40)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.sampled_from(FIELD_NAMES), inner, max_size=4),
    max_leaves=8,
)
field_values = scalars | st.integers(0, 2**32) | st.lists(scalars, max_size=3)
tap_items = st.fixed_dictionaries(
    {}, optional={name: st.integers(-1, 2**32) | scalars for name in FIELD_NAMES[:6]}
)
messages = st.one_of(
    values,
    st.fixed_dictionaries(
        {"t": st.sampled_from(sorted(CLIENT_TAGS | SERVER_TAGS)) | scalars},
        optional={
            **{name: field_values for name in FIELD_NAMES},
            "taps": st.lists(tap_items, max_size=3) | field_values,
            "nonce": st.binary(min_size=15, max_size=17) | field_values,
            "mac": st.binary(min_size=31, max_size=33) | field_values,
        },
    ),
)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


packable = messages.filter(lambda obj: _packs(obj))


def _packs(obj: Any) -> bool:
    try:
        pack(obj)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


tap_fields = {
    "seq": st.integers(1, 2**32 - 1),
    "card": st.integers(1, 10**18 - 1),
    "time_ms": st.integers(0, 2**63 - 1),
    "kind": st.integers(1, 255),
}
valid_messages = st.one_of(
    st.builds(Hello, terminal_id=st.integers(1, 2**31 - 1), nonce=st.binary(min_size=16, max_size=16),
              version=st.sampled_from([1, 1, 1, 2])),
    st.builds(Auth, mac=st.binary(min_size=32, max_size=32)),
    st.builds(Tap, **tap_fields),
    st.builds(TapBatch, req=st.integers(0, 2**32 - 1),
              taps=st.lists(st.builds(TapItem, **tap_fields), min_size=1, max_size=3)),
    st.builds(Ping, time_ms=st.integers(0, 2**63 - 1)),
    st.builds(ParamsRequest),
)
frames = st.one_of(
    valid_messages.map(frame),
    packable.map(lambda obj: encode_frame(pack(obj))),
    st.binary(min_size=1, max_size=60).map(encode_frame),
    st.binary(max_size=60),  # raw bytes: random lengths, partial frames
)


def feed_in_chunks(conn: ServerConnection, data: bytes, cuts: list[int], drive: bool) -> list[Any]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    events: list[Any] = []
    for a, b in zip(points, points[1:], strict=False):
        for event in conn.receive_data(data[a:b]):
            events.append(event)
            if drive and isinstance(event, HelloReceived):
                conn.challenge(S_NONCE, NOW_MS)
            elif drive and isinstance(event, AuthReceived):
                conn.accept(AUTH_OK)
    return events


def check_events(events: list[Any]) -> None:
    for event in events:
        if isinstance(event, Violation):
            [err] = decode_server(event.reply)
            assert isinstance(err, Error) and err.code == event.code
        else:
            assert isinstance(event, HelloReceived | AuthReceived | TapsReceived | PingReceived
                              | ParamsRequested)


FUZZ = settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FUZZ
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 1000), max_size=12),
    framed=st.booleans(),
)
def test_fuzz_random_bytes_only_violations(data: bytes, cuts: list[int], framed: bool) -> None:
    conn = ServerConnection()
    if framed:  # a valid length prefix, so the random body reaches the message decoder
        data = encode_frame(data or b"\x00") + data
    events = feed_in_chunks(conn, data, cuts, drive=False)
    check_events(events)
    assert all(isinstance(e, Violation | HelloReceived) for e in events)


@FUZZ
@given(
    parts=st.lists(frames, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    start_ready=st.booleans(),
)
def test_fuzz_msgpack_structures_never_raise(parts: list[bytes], cuts: list[int], start_ready: bool) -> None:
    conn = ready() if start_ready else ServerConnection()
    events = feed_in_chunks(conn, b"".join(parts), cuts, drive=True)
    check_events(events)
    if conn.state is not State.CLOSED:
        assert conn.bad_messages <= MAX_BAD_MESSAGES
