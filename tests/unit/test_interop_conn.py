"""The link's connection state machines (protocols/interop_conn.py): both ends driven against
each other in memory, and every way a peer can break the handshake or the session."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.protocols import interop as ix
from citycard.protocols.interop_conn import (
    AckIn,
    AcquirerSide,
    AdviceIn,
    AnswerIn,
    Closed,
    ErrorIn,
    IssuerSide,
    LinkState,
    PeerAuthenticated,
    PongIn,
    TapIn,
)

HZ_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SH_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
NB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
SH_CARD = 31000000000000179
HZ_CARD = 33010000000000173
NOW = 1_700_000_000_000


def pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def issuer(**kw: object) -> IssuerSide:
    peers = kw.pop("peers", {"HZ": pub(HZ_KEY), "NB": pub(NB_KEY)})
    return IssuerSide("SH", SH_KEY, peers, b"\xb0" * 16, lambda card: card // 10**11 == 310000, **kw)  # type: ignore[arg-type]


def acquirer(own: str = "HZ", key: Ed25519PrivateKey = HZ_KEY, issuer_key: bytes | None = None) -> AcquirerSide:
    return AcquirerSide(own, key, "SH", pub(SH_KEY) if issuer_key is None else issuer_key, b"\xa0" * 16)


def handshake(i: IssuerSide, a: AcquirerSide) -> None:
    s1 = i.receive_data(a.hello(), NOW)
    s2 = a.receive_data(s1.out)
    s3 = i.receive_data(s2.out, NOW + 1)
    s4 = a.receive_data(s3.out)
    assert s3.events == [PeerAuthenticated("HZ")]
    assert s4.events == [PeerAuthenticated("SH", 15_000)]


def tap(acq: str = "HZ", card: int = SH_CARD, seq: int = 1) -> ix.RemoteTap:
    return ix.RemoteTap(acquirer=acq, terminal_id=1001, seq=seq, card=card, time_ms=NOW, kind=1, amount_fen=200)


def errors(out: bytes) -> list[int]:
    return [m.code for m in ix.LinkReader(issuer_side=False).feed(out) if isinstance(m, ix.Error)]


def test_handshake_then_tap_answer_advice_and_ping_round_trip() -> None:
    i, a = issuer(), acquirer()
    handshake(i, a)
    assert i.state is a.state is LinkState.READY
    assert i.peer == "HZ"
    step = i.receive_data(a.send(tap()), NOW)
    assert step.events == [TapIn(tap())] and not step.close
    answer = ix.RemoteTapAnswer(acquirer="HZ", terminal_id=1001, seq=1, code=0, fare_fen=200, balance_fen=4800)
    assert a.receive_data(i.answer(answer)).events == [AnswerIn(answer)]
    advice = ix.StandInAdvice(acquirer="HZ", req=7, items=[ix.AdviceItem(
        terminal_id=1001, seq=2, card=SH_CARD, amount_fen=200, time_ms=NOW, kind=1)])
    assert i.receive_data(a.send(advice), NOW).events == [AdviceIn(advice)]
    ack = ix.StandInAdviceAck(acquirer="HZ", req=7, items=[ix.AdviceAckItem(terminal_id=1001, seq=2, decision=0,
                                                                           code=0)])
    assert a.receive_data(i.ack(ack)).events == [AckIn(ack)]
    pong = i.receive_data(a.send(ix.Ping(time_ms=5)), NOW + 9).out
    assert a.receive_data(pong).events == [PongIn(ix.Pong(time_ms=5, server_time_ms=NOW + 9))]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=20))
def test_any_chunking_of_the_handshake_and_taps_gives_the_same_events(cuts: list[int]) -> None:
    i, a = issuer(), acquirer()
    stream = a.hello()
    s = i.receive_data(stream, NOW)
    s2 = a.receive_data(s.out)
    data = s2.out
    events: list[object] = []
    pos = 0
    # auth plus taps, fed to the issuer in arbitrary pieces (it is READY after auth: taps may follow at once)
    a_state_ready_frames = [ix.encode(tap(seq=n)) for n in range(1, 4)]
    data += b"".join(a_state_ready_frames)
    for cut in cuts:
        events += i.receive_data(data[pos:pos + cut], NOW).events
        pos += cut
    events += i.receive_data(data[pos:], NOW).events
    assert events == [PeerAuthenticated("HZ"), *[TapIn(tap(seq=n)) for n in range(1, 4)]]


def test_tap_naming_another_acquirer_is_refused_and_the_connection_stays_open() -> None:
    i, a = issuer(), acquirer()
    handshake(i, a)
    step = i.receive_data(ix.encode(tap(acq="NB")), NOW)
    assert step.events == [] and not step.close
    assert errors(step.out) == [ix.LinkError.WRONG_ACQUIRER]
    assert i.state is LinkState.READY
    assert i.receive_data(ix.encode(tap()), NOW).events == [TapIn(tap())]


def test_acquirer_side_refuses_to_send_a_tap_in_anothers_name() -> None:
    i, a = issuer(), acquirer()
    handshake(i, a)
    with pytest.raises(ValueError, match="acquirer must be HZ"):
        a.send(tap(acq="NB"))


def test_card_of_another_issuer_is_refused() -> None:
    i, a = issuer(), acquirer()
    handshake(i, a)
    step = i.receive_data(a.send(tap(card=HZ_CARD)), NOW)
    assert step.events == [] and errors(step.out) == [ix.LinkError.NOT_OUR_CARD]
    assert a.receive_data(step.out).events == [ErrorIn(int(ix.LinkError.NOT_OUR_CARD), "card 33010000000000173 is not SH's")]


def test_tap_before_auth_closes_with_not_authenticated() -> None:
    i = issuer()
    step = i.receive_data(ix.encode(tap()), NOW)
    assert step.close and errors(step.out) == [ix.LinkError.NOT_AUTHENTICATED]
    assert i.state is LinkState.CLOSED
    assert i.receive_data(ix.encode(tap()), NOW).events == []  # nothing after a close counts


def test_unknown_city_and_own_city_are_refused() -> None:
    for city in ("NJ", "SH"):
        i = issuer()
        step = i.receive_data(ix.encode(ix.Hello(city=city, nonce=b"\x01" * 16)), NOW)
        assert step.close and errors(step.out) == [ix.LinkError.UNKNOWN_CITY]


def test_wrong_version_is_refused() -> None:
    step = issuer().receive_data(ix.encode(ix.Hello(city="HZ", nonce=b"\x01" * 16, version=2)), NOW)
    assert step.close and errors(step.out) == [ix.LinkError.UNSUPPORTED_VERSION]


def test_acquirer_claiming_another_city_fails_auth() -> None:
    # NB's key claiming to be HZ: the issuer checks the signature under HZ's registered key
    i, a = issuer(), acquirer(own="HZ", key=NB_KEY)
    s1 = i.receive_data(a.hello(), NOW)
    s2 = a.receive_data(s1.out)
    s3 = i.receive_data(s2.out, NOW)
    assert s3.close and errors(s3.out) == [ix.LinkError.AUTH_FAILED]
    assert Closed in [type(e) for e in s3.events]


def test_issuer_with_the_wrong_key_is_refused_by_the_acquirer() -> None:
    i, a = issuer(), acquirer(issuer_key=pub(NB_KEY))
    step = a.receive_data(i.receive_data(a.hello(), NOW).out)
    assert step.close and step.out == b"" and a.state is LinkState.CLOSED
    assert [type(e) for e in step.events] == [Closed]


def test_signature_from_an_earlier_session_proves_nothing() -> None:
    # An auth recorded from one session replayed into another (a fresh issuer nonce) fails.
    i1, a1 = issuer(), acquirer()
    recorded_auth = a1.receive_data(i1.receive_data(a1.hello(), NOW).out).out
    i2 = IssuerSide("SH", SH_KEY, {"HZ": pub(HZ_KEY)}, b"\xc0" * 16, lambda c: True)
    i2.receive_data(ix.encode(ix.Hello(city="HZ", nonce=b"\xa0" * 16)), NOW)
    step = i2.receive_data(recorded_auth, NOW)
    assert step.close and errors(step.out) == [ix.LinkError.AUTH_FAILED]


def test_bad_frame_and_bad_message_close() -> None:
    i = issuer()
    step = i.receive_data(b"\x00\x00\x00\x00", NOW)
    assert step.close and errors(step.out) == [ix.LinkError.BAD_FRAME]
    i = issuer()
    step = i.receive_data(b"\x00\x00\x00\x02\x81\xa1", NOW)  # not a whole MessagePack map
    assert step.close and errors(step.out) == [ix.LinkError.BAD_MESSAGE]


def test_second_hello_is_unexpected_but_not_fatal() -> None:
    i, a = issuer(), acquirer()
    handshake(i, a)
    step = i.receive_data(ix.encode(ix.Hello(city="HZ", nonce=b"\x02" * 16)), NOW)
    assert not step.close and errors(step.out) == [ix.LinkError.UNEXPECTED_MESSAGE]


def test_fatal_error_from_the_issuer_closes_the_acquirer() -> None:
    a = acquirer()
    a.hello()
    step = a.receive_data(ix.encode(ix.Error(code=int(ix.LinkError.UNKNOWN_CITY), message="no")))
    assert step.close and a.state is LinkState.CLOSED


def test_acquirer_cannot_send_before_ready_and_ignores_answers_for_others() -> None:
    i, a = issuer(), acquirer()
    a.hello()
    with pytest.raises(RuntimeError, match="await_hello"):
        a.send(tap())
    handshake_i = i.receive_data(ix.encode(ix.Hello(city="HZ", nonce=b"\xa0" * 16)), NOW)
    i.receive_data(a.receive_data(handshake_i.out).out, NOW)
    a.receive_data(ix.encode(ix.AuthOk(server_time_ms=NOW, heartbeat_ms=15_000)))
    other = ix.RemoteTapAnswer(acquirer="NB", terminal_id=1, seq=1, code=0, fare_fen=0, balance_fen=0)
    assert a.receive_data(ix.encode(other)).events == []


def test_answers_before_ready_are_not_sent() -> None:
    i = issuer()
    answer = ix.RemoteTapAnswer(acquirer="HZ", terminal_id=1001, seq=1, code=0, fare_fen=200, balance_fen=4800)
    assert i.answer(answer) == b"" and i.internal_error("x") == b""
