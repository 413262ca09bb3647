"""ClientConnection paired with ServerConnection in memory, byte for byte: what one emits is fed
to the other whole, byte by byte, and cut at random points (frames split and joined). Then the
client against a server that breaks the rules (the documented vectors: test_protocol_client_vectors)."""

from collections.abc import Callable

import pytest

from citycard.errors import LocalProtocolError
from citycard.protocols import messages as m
from citycard.protocols.auth import terminal_key
from citycard.protocols.client import (
    BatchAnswered,
    ClientConnection,
    ClientState,
    ErrorReceived,
    ParamsReceived,
    PongReceived,
    TapAnswered,
    Violation,
)
from citycard.protocols.codes import ErrorCode
from citycard.protocols.connection import (
    AuthReceived,
    HelloReceived,
    TapsReceived,
)
from citycard.protocols.frames import encode_frame
from tests.support.protocol_pair import (
    AUTH_OK,
    BALANCE_FEN,
    FARE_FEN,
    MASTER_KEY,
    MODES,
    NOW_MS,
    S_NONCE,
    T_NONCE,
    TERMINAL_ID,
    Pair,
    Server,
    frame,
    item,
)


@pytest.mark.parametrize("mode", MODES)
def test_full_exchange(mode: str) -> None:
    pair = Pair(mode)
    client = pair.client
    assert pair.connect() == AUTH_OK and client.max_batch == 1000
    [single] = pair.send(client.tap(item(1)))
    assert isinstance(single, TapAnswered)
    assert single.result == m.Result(seq=1, code=0, fare_fen=FARE_FEN, balance_fen=BALANCE_FEN)
    req, data = client.taps([item(2), item(3)])
    [batch] = pair.send(data)
    assert isinstance(batch, BatchAnswered) and batch.results.req == req
    assert [r.seq for r in batch.results.results] == [2, 3]
    [pong] = pair.send(client.ping(NOW_MS + 5))
    assert isinstance(pong, PongReceived) and pong.pong.time_ms == NOW_MS + 5
    [params] = pair.send(client.params(fare_version=1, hotlist_version=1))
    assert isinstance(params, ParamsReceived) and params.params.hotlist_added == [7]
    assert client.pending == 0 and client.state is ClientState.READY


@pytest.mark.parametrize("mode", MODES)
def test_pipelined_requests_joined_in_one_write_are_each_matched(mode: str) -> None:
    pair = Pair(mode)
    pair.connect()
    client = pair.client
    req_a, batch_a = client.taps([item(4), item(5), item(6)])
    req_b, batch_b = client.taps([item(7)])
    pair.server.fail_reqs.add(req_b)
    data = client.tap(item(3)) + batch_a + batch_b + client.ping(1) + client.params() + client.ping(2)
    assert client.pending == 6
    events = pair.send(data)
    assert [type(e) for e in events] == [TapAnswered, BatchAnswered, ErrorReceived, PongReceived,
                                         ParamsReceived, PongReceived]
    error = events[2]
    assert isinstance(error, ErrorReceived) and (error.req, error.seq, error.fatal) == (req_b, 0, False)
    assert isinstance(events[1], BatchAnswered) and events[1].results.req == req_a
    assert client.pending == 0 and not client.closed


def test_the_client_sends_exactly_what_the_server_decodes() -> None:
    pair = Pair("whole")
    pair.connect()
    tap = m.Tap(seq=9, card=5, time_ms=NOW_MS, kind=12, route=0, amount_fen=3000, bill_class=2)
    pair.send(pair.client.tap(tap))
    [hello, auth, taps] = pair.server.seen
    assert hello == HelloReceived(TERMINAL_ID, T_NONCE)
    assert isinstance(auth, AuthReceived) and (auth.terminal_nonce, auth.server_nonce) == (T_NONCE, S_NONCE)
    assert isinstance(taps, TapsReceived) and taps.single and taps.taps == [tap]


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_key_is_refused_and_the_connection_closes(mode: str) -> None:
    pair = Pair(mode, client=ClientConnection(TERMINAL_ID, terminal_key(b"\x99" * 32, TERMINAL_ID)))
    pair.send(pair.client.hello(T_NONCE))
    [refused] = pair.send(pair.client.auth())
    assert isinstance(refused, ErrorReceived) and refused.fatal
    assert refused.error.code == ErrorCode.AUTH_FAILED and pair.client.closed
    with pytest.raises(LocalProtocolError):
        pair.client.tap(item(1))
    assert pair.client.receive_data(frame(AUTH_OK)) == []  # nothing is read once closed


def test_a_caller_given_mac_is_sent_as_it_is() -> None:
    pair = Pair("whole")
    pair.send(pair.client.hello(T_NONCE))
    [refused] = pair.send(pair.client.auth(mac=b"\x00" * 32))
    assert isinstance(refused, ErrorReceived) and refused.error.code == ErrorCode.AUTH_FAILED


# -- frame size limits ---------------------------------------------------------------------
def test_an_oversize_server_frame_is_fatal_from_its_header_alone() -> None:
    client = ClientConnection(TERMINAL_ID, b"k" * 32, max_frame_bytes=64)
    [violation] = client.receive_data((65).to_bytes(4, "big"))
    assert isinstance(violation, Violation) and violation.fatal
    assert violation.code == ErrorCode.FRAME_TOO_LARGE and client.closed


def test_a_zero_length_server_frame_is_fatal() -> None:
    client = ClientConnection(TERMINAL_ID, b"k" * 32)
    [violation] = client.receive_data(b"\x00\x00\x00\x00")
    assert isinstance(violation, Violation) and violation.code == ErrorCode.BAD_FRAME and violation.fatal


def test_a_server_frame_at_the_limit_is_read() -> None:
    pair = Pair("whole", client=ClientConnection(TERMINAL_ID, terminal_key(MASTER_KEY, TERMINAL_ID),
                                                 max_frame_bytes=len(frame(AUTH_OK)) - 4))
    pair.connect()


def test_the_client_refuses_to_send_an_oversize_frame() -> None:
    limit = 200
    pair = Pair("whole", client=ClientConnection(TERMINAL_ID, terminal_key(MASTER_KEY, TERMINAL_ID),
                                                 max_frame_bytes=limit),
                server=Server(max_frame_bytes=limit))
    pair.connect()
    with pytest.raises(LocalProtocolError) as err:
        pair.client.taps([item(s) for s in range(1, 10)])
    assert err.value.code == ErrorCode.FRAME_TOO_LARGE and pair.client.pending == 0
    [answer] = pair.send(pair.client.taps([item(1), item(2)])[1])  # fits: sent and answered
    assert isinstance(answer, BatchAnswered)


def test_the_server_refuses_a_frame_above_its_limit_and_the_client_learns_it_is_fatal() -> None:
    pair = Pair("split", server=Server(max_frame_bytes=100))
    pair.connect()
    [refused] = pair.send(pair.client.taps([item(s) for s in range(1, 10)])[1])
    assert isinstance(refused, ErrorReceived) and refused.fatal
    assert refused.error.code == ErrorCode.FRAME_TOO_LARGE and pair.client.closed and pair.client.pending == 0


# -- what the client refuses to send ---------------------------------------------------------
def _ready() -> ClientConnection:
    pair = Pair("whole")
    pair.connect()
    return pair.client


@pytest.mark.parametrize("send", [
    lambda c: c.tap(item(1)), lambda c: c.taps([item(1)]), lambda c: c.ping(1), lambda c: c.params(),
    lambda c: c.auth(),
])
def test_nothing_but_hello_before_the_connection_is_ready(send: Callable[[ClientConnection], object]) -> None:
    client = ClientConnection(TERMINAL_ID, b"k" * 32)
    with pytest.raises(LocalProtocolError):
        send(client)
    client.hello(T_NONCE)
    with pytest.raises(LocalProtocolError):
        send(client)
    assert client.pending == 0


def test_hello_once_and_with_a_whole_nonce() -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection(TERMINAL_ID, b"k" * 32).hello(b"short")
    client = _ready()
    with pytest.raises(LocalProtocolError):
        client.hello(T_NONCE)


@pytest.mark.parametrize("items", [[], [item(s) for s in range(1, 1002)], [item(1), item(1)]])
def test_batches_the_protocol_does_not_allow_are_not_sent(items: list[m.TapItem]) -> None:
    client = _ready()
    with pytest.raises(LocalProtocolError) as err:
        client.taps(items)
    assert err.value.code == ErrorCode.BAD_MESSAGE and client.pending == 0


def test_req_ids_are_distinct_while_outstanding_and_wrap() -> None:
    client = _ready()
    assert client.taps([item(1)], req=7)[0] == 7
    with pytest.raises(LocalProtocolError):
        client.taps([item(2)], req=7)
    assert [client.taps([item(s)])[0] for s in (3, 4)] == [1, 2]
    client._next_req = 2**32 - 1  # the counter wraps after 2^32-1, skipping outstanding ids
    assert [client.taps([item(s)])[0] for s in (5, 6)] == [2**32 - 1, 3]


def test_outstanding_requests_are_bounded() -> None:
    pair = Pair("whole", client=ClientConnection(TERMINAL_ID, terminal_key(MASTER_KEY, TERMINAL_ID),
                                                 max_pending=2))
    pair.connect()
    data = pair.client.ping(1) + pair.client.ping(2)
    with pytest.raises(LocalProtocolError):
        pair.client.ping(3)
    assert len(pair.send(data)) == 2 and pair.client.pending == 0
    pair.client.ping(3)


# -- the server's errors ---------------------------------------------------------------------
def test_errors_naming_a_request_answer_it() -> None:
    client = _ready()
    client.tap(item(5))
    req, _ = client.taps([item(6)])
    [by_seq, by_req, unnamed] = client.receive_data(
        frame(m.Error(code=int(ErrorCode.INTERNAL), message="", seq=5))
        + frame(m.Error(code=int(ErrorCode.INTERNAL), message="", req=req))
        + frame(m.Error(code=int(ErrorCode.BAD_MESSAGE), message="")))
    assert isinstance(by_seq, ErrorReceived) and (by_seq.seq, by_seq.req, by_seq.fatal) == (5, 0, False)
    assert isinstance(by_req, ErrorReceived) and (by_req.seq, by_req.req) == (0, req)
    assert isinstance(unnamed, ErrorReceived) and (unnamed.seq, unnamed.req) == (0, 0)
    assert client.pending == 0 and not client.closed


@pytest.mark.parametrize("code", [*sorted(int(c) for c in ErrorCode if c.name in {
    "BAD_FRAME", "FRAME_TOO_LARGE", "AUTH_FAILED", "UNKNOWN_TERMINAL", "TERMINAL_DISABLED", "AUTH_REPLAY",
    "UNSUPPORTED_VERSION", "TOO_MANY_ERRORS", "AUTH_TIMEOUT"}), 99])
def test_fatal_and_unknown_error_codes_close_the_connection(code: int) -> None:
    client = _ready()
    client.tap(item(1))
    [error] = client.receive_data(frame(m.Error(code=code, message="bye")))
    assert isinstance(error, ErrorReceived) and error.fatal and client.closed and client.pending == 0


def test_internal_is_fatal_only_during_authentication() -> None:
    client = ClientConnection(TERMINAL_ID, b"k" * 32)
    client.hello(T_NONCE)
    [error] = client.receive_data(frame(m.Error(code=int(ErrorCode.INTERNAL), message="no store")))
    assert isinstance(error, ErrorReceived) and error.fatal and client.closed


def test_an_unsupported_version_is_refused_by_the_server() -> None:
    pair = Pair("bytes")
    [refused] = pair.send(pair.client.hello(T_NONCE, version=2))
    assert isinstance(refused, ErrorReceived) and refused.error.code == ErrorCode.UNSUPPORTED_VERSION
    assert refused.fatal and pair.client.closed


# -- a server that breaks the rules ------------------------------------------------------------
def test_answers_to_nothing_sent_are_reported_and_not_matched() -> None:
    client = _ready()
    stray = [m.Result(seq=3, code=0, fare_fen=0, balance_fen=0), m.Results(req=9, results=[]),
             m.Pong(time_ms=1, server_time_ms=2), m.Params(fare_version=1, hotlist_version=1),
             m.Challenge(nonce=S_NONCE, server_time_ms=1), AUTH_OK]
    events = client.receive_data(b"".join(frame(msg) for msg in stray))
    assert [(type(e), e.code, e.fatal, e.msg) for e in events if isinstance(e, Violation)] == [
        (Violation, ErrorCode.UNEXPECTED_MESSAGE, False, msg) for msg in stray]
    assert not client.closed


def test_a_duplicated_tap_is_answered_twice_and_both_answers_match() -> None:
    client = _ready()
    data = client.tap(item(1)) + client.tap(item(1))
    server_answer = frame(m.Result(seq=1, code=0, fare_fen=1, balance_fen=1))
    events = client.receive_data(server_answer * 3)
    assert [type(e) for e in events] == [TapAnswered, TapAnswered, Violation]
    assert data and client.pending == 0


@pytest.mark.parametrize("seqs", [[2], [3, 2], [2, 3, 4]])
def test_results_that_do_not_answer_the_batch_in_order_are_fatal(seqs: list[int]) -> None:
    client = _ready()
    req, _ = client.taps([item(2), item(3)])
    bad = m.Results(req=req, results=[m.ResultItem(seq=s, code=0, fare_fen=0, balance_fen=0) for s in seqs])
    [violation] = client.receive_data(frame(bad))
    assert isinstance(violation, Violation) and violation.fatal and violation.code == ErrorCode.BAD_MESSAGE
    assert client.closed


@pytest.mark.parametrize(("body", "code"), [
    (b"\xc1", ErrorCode.BAD_MESSAGE),
    (m.encoder.encode({"t": "result", "seq": "x"}), ErrorCode.BAD_MESSAGE),
    (m.encoder.encode({"t": "news", "text": "hi"}), ErrorCode.UNKNOWN_MESSAGE),
    (b"\x91" * 5000 + b"\x00", ErrorCode.BAD_MESSAGE),
])
def test_bodies_that_do_not_decode_are_reported_and_skipped(body: bytes, code: ErrorCode) -> None:
    client = _ready()
    client.ping(7)
    events = client.receive_data(encode_frame(body) + frame(m.Pong(time_ms=7, server_time_ms=8)))
    assert [type(e) for e in events] == [Violation, PongReceived]
    assert isinstance(events[0], Violation) and events[0].code == code and not events[0].fatal


def test_raw_bytes_sent_are_tracked_so_their_answers_match() -> None:
    pair = Pair("split")
    pair.connect()
    raw = frame(m.ParamsRequest(hotlist_version=0))
    assert pair.client.send_raw(raw + raw) == raw + raw
    events = pair.send(raw + raw)
    assert [type(e) for e in events] == [ParamsReceived, ParamsReceived] and pair.client.pending == 0
    [third] = pair.client.receive_data(frame(m.Params(fare_version=1, hotlist_version=1)))
    assert isinstance(third, Violation) and third.code == ErrorCode.UNEXPECTED_MESSAGE
    pair.client.send_raw(b"\x00\x00\x00\x00garbage")  # not a request: nothing to track
    assert pair.client.pending == 0
