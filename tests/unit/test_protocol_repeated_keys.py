"""Issue 16: a map that repeats a key is refused, never decided; every error names the tap
(seq) or batch (req) it answers where readable; frames before a bad frame header are still
handled, in order, with the error after them."""

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.protocols.auth import auth_mac, terminal_key
from citycard.protocols.codes import ErrorCode
from citycard.protocols.connection import (
    HelloReceived,
    PingReceived,
    ServerConnection,
    State,
    TapsReceived,
    Violation,
)
from citycard.protocols.dupkeys import repeats_key
from citycard.protocols.messages import (
    Auth,
    AuthOk,
    Hello,
    Ping,
    Pong,
    Tap,
    encoder,
    server_decoder,
)
from tests.support.terminal import encode as frame
from tests.support.terminal import unframe

TID = 77
MASTER = b"\x01" * 32
T_NONCE, S_NONCE = b"\x02" * 16, b"\x03" * 16
NOW_MS = 1_765_000_000_000
CARD = 3_101_000_000_000_017


def ready() -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE)))
    conn.challenge(S_NONCE, NOW_MS)
    conn.receive_data(frame(Auth(mac=auth_mac(terminal_key(MASTER, TID), TID, T_NONCE, S_NONCE))))
    conn.accept(AuthOk(fare_version=1, hotlist_version=1, max_batch=1000, heartbeat_ms=30_000, server_time_ms=NOW_MS))
    assert conn.state is State.READY
    return conn


def pairs(*kv: tuple[str, Any]) -> bytes:
    """A map body from key/value pairs as given, repeats included (no library writes those)."""
    n = len(kv)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in kv)


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


TAP = (("t", "tap"), ("seq", 5), ("card", CARD), ("time_ms", NOW_MS), ("kind", 1), ("route", 42))


def the_error(events: list[Any]) -> tuple[Violation, Any]:
    [v] = events
    assert isinstance(v, Violation)
    [err] = [server_decoder.decode(b) for b in _bodies(v.reply)]
    return v, err


def _bodies(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


@pytest.mark.parametrize("extra", [[("card", CARD + 1)], [("seq", 6)], [("route", 43)], [("t", "tap")],
                                   [("x", 1), ("x", 2)]], ids=lambda e: e[0][0])
def test_a_tap_repeating_a_key_is_refused_not_decided(extra: list[tuple[str, Any]]) -> None:
    conn = ready()
    v, err = the_error(conn.receive_data(framed(pairs(*TAP, *extra))))
    assert v.code == ErrorCode.BAD_MESSAGE and not v.fatal and "repeats a key" in v.message
    assert err.seq == (0 if extra[0][0] == "seq" else 5)  # a repeated seq names no tap
    assert conn.state is State.READY


def test_a_batch_item_repeating_a_key_is_refused() -> None:
    item = pairs(("seq", 1), ("card", CARD), ("time_ms", NOW_MS), ("kind", 1), ("route", 4), ("card", CARD + 9))
    body = b"\x83" + msgpack.packb("t") + msgpack.packb("taps") + msgpack.packb("req") + msgpack.packb(9) \
        + msgpack.packb("taps") + b"\x92" + pairs(*TAP[1:]) + item
    v, err = the_error(ready().receive_data(framed(body)))
    assert v.code == ErrorCode.BAD_MESSAGE and err.req == 9


def test_hello_repeating_terminal_id_is_refused() -> None:
    conn = ServerConnection()
    body = pairs(("t", "hello"), ("terminal_id", TID), ("nonce", T_NONCE), ("terminal_id", TID + 1))
    v, _ = the_error(conn.receive_data(framed(body)))
    assert v.code == ErrorCode.BAD_MESSAGE and conn.terminal_id == 0


def test_no_repeat_in_any_encoding_passes() -> None:
    """Key order, omitted defaults, unknown keys, non-shortest ints, map 16: all still taps."""
    odd = b"\xde\x00\x06" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in reversed(TAP)) \
        .replace(b"\x05", b"\xcd\x00\x05", 1)  # seq 5 as uint 16
    for body in (pairs(*TAP), pairs(*TAP, ("future_field", [1, {"a": 2}])), pairs(*TAP[:5]), odd):
        [event] = ready().receive_data(framed(body))
        assert isinstance(event, TapsReceived), body
        assert event.taps[0].seq == 5 and event.taps[0].card == CARD
        assert not repeats_key(body, b"")


def test_repeats_key_fast_path_agrees_with_the_exact_walk() -> None:
    body = encoder.encode(Tap(seq=1, card=CARD, time_ms=NOW_MS, kind=1))
    assert not repeats_key(body, body)
    assert repeats_key(pairs(*TAP, ("kind", 1)), b"")


def test_card_out_of_range_names_the_tap() -> None:
    """Issue 16: a card number out of range was answered BAD_MESSAGE with seq 0."""
    for card in (0, 10**18):
        v, err = the_error(ready().receive_data(framed(pairs(*TAP[:2], ("card", card), *TAP[3:]))))
        assert v.code == ErrorCode.BAD_MESSAGE and err.seq == 5


def test_bad_batch_names_its_req() -> None:
    body = pairs(("t", "taps"), ("req", 12), ("taps", [{"seq": 1, "card": 0, "time_ms": NOW_MS, "kind": 1}]))
    _, err = the_error(ready().receive_data(framed(body)))
    assert err.code == ErrorCode.BAD_MESSAGE and err.req == 12


def test_frames_before_a_bad_header_are_handled_then_the_error() -> None:
    """Issue 16: a read holding hello, ping... then a zero-length frame lost every answer."""
    conn = ready()
    events = conn.receive_data(frame(Ping(time_ms=1)) + framed(pairs(*TAP)) + b"\x00\x00\x00\x00")
    assert [type(e) for e in events] == [PingReceived, TapsReceived, Violation]
    assert events[2].code == ErrorCode.BAD_FRAME and events[2].fatal and conn.closed
    # the answers owed to the requests before it may still be encoded
    assert unframe(conn.send(Pong(time_ms=1, server_time_ms=2)))[0]["t"] == "pong"


def test_hello_before_a_bad_header_still_gets_its_challenge() -> None:
    conn = ServerConnection()
    events = conn.receive_data(frame(Hello(terminal_id=TID, nonce=T_NONCE)) + b"\xff\xff\xff\xff")
    assert [type(e) for e in events] == [HelloReceived, Violation]
    assert unframe(conn.challenge(S_NONCE, NOW_MS))[0]["t"] == "challenge"  # no exception: answered


@settings(max_examples=300, deadline=None)
@given(order=st.permutations(list(range(len(TAP)))), repeat=st.integers(0, len(TAP) - 1),
       value=st.one_of(st.integers(0, 2**40), st.text(max_size=4)), where=st.integers(0, len(TAP)))
def test_no_repeated_key_is_ever_decided(order: list[int], repeat: int, value: Any, where: int) -> None:
    """Whatever key repeats, in whatever order and with whatever value: refused, never a tap."""
    kv = [TAP[i] for i in order]
    kv.insert(where, (TAP[repeat][0], value))
    events = ready().receive_data(framed(pairs(*kv)))
    assert [type(e) for e in events] == [Violation]
    assert events[0].code == ErrorCode.BAD_MESSAGE


def test_a_tap_before_authentication_is_named_in_its_refusal() -> None:
    v, err = the_error(ServerConnection().receive_data(framed(pairs(*TAP))))
    assert (v.code, err.seq) == (ErrorCode.NOT_AUTHENTICATED, 5)


def _noncanonical(*kv: tuple[str, Any]) -> bytes:
    """``pairs`` with 5 as a uint 32 (a shorter int exists): no re-encode equals it, so the
    exact walk runs."""
    return pairs(*kv).replace(msgpack.packb(5), b"\xce\x00\x00\x00\x05", 1)


@pytest.mark.parametrize("extra", [("taps", [1]), ("records", 3), ("taps", "x"), ("records", [[1, 2]])],
                         ids=lambda e: f"{e[0]}={e[1]!r}")
def test_an_unknown_taps_or_records_field_is_ignored_not_raised(extra: tuple[str, Any]) -> None:
    """Review finding: a non-canonical ping (or tap) with an unknown "taps"/"records" field that
    is not a list of maps raised msgspec.ValidationError out of receive_data, before login too."""
    conn = ServerConnection()
    v, err = the_error(conn.receive_data(framed(_noncanonical(("t", "ping"), ("time_ms", 5), extra))))
    assert v.code == ErrorCode.NOT_AUTHENTICATED and not v.fatal and conn.state is State.AWAIT_HELLO
    conn = ready()
    [event] = conn.receive_data(framed(_noncanonical(("t", "ping"), ("time_ms", 5), extra)))
    assert event == PingReceived(5)
    [tap] = conn.receive_data(framed(_noncanonical(*TAP, extra)))
    assert isinstance(tap, TapsReceived) and tap.taps[0].seq == 5
    assert conn.state is State.READY


def test_a_batch_with_an_unknown_records_field_is_read() -> None:
    item = dict(TAP[1:])
    body = _noncanonical(("t", "taps"), ("req", 9), ("taps", [item]), ("records", 3))
    [event] = ready().receive_data(framed(body))
    assert isinstance(event, TapsReceived) and event.req == 9 and event.taps[0].seq == 5
