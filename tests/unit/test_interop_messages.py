"""The inter-platform link: messages round trip, every bound refused with the field named, the
Ed25519 handshake (and forgeries), and docs/interop.md's vectors re-decoded independently."""

import importlib.util
import re
import sys
import tomllib
from types import ModuleType

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.config.issuers import registry_from_dict
from citycard.domain.results import Result
from citycard.errors import RemoteProtocolError
from citycard.protocols import interop as ix
from tests.support.paths import ROOT

DOC = ROOT / "docs" / "interop.md"
SCRIPT = ROOT / "scripts" / "interop_vectors.py"

cities = st.from_regex(r"\A[A-Z][A-Z0-9]{1,7}\Z")
u31, u32 = st.integers(1, 2**31 - 1), st.integers(1, 2**32 - 1)
cards, times = st.integers(1, 10**18 - 1), st.integers(0, 2**63 - 1)
fen, kinds, codes = st.integers(0, 2**31 - 1), st.integers(1, 255), st.integers(0, 0xFFFF)

taps = st.builds(ix.RemoteTap, acquirer=cities, terminal_id=u31, seq=u32, card=cards, time_ms=times, kind=kinds,
                 amount_fen=fen, route=st.integers(0, 2**31 - 1), bill_class=st.integers(0, 255))
answers = st.builds(ix.RemoteTapAnswer, acquirer=cities, terminal_id=u31, seq=u32, code=codes, fare_fen=fen,
                    balance_fen=st.integers(-(2**31), 2**31 - 1), replay=st.booleans())
advice_items = st.builds(ix.AdviceItem, terminal_id=u31, seq=u32, card=cards, amount_fen=fen, time_ms=times,
                         kind=kinds, route=st.integers(0, 2**31 - 1))
advices = st.builds(ix.StandInAdvice, acquirer=cities, req=st.integers(0, 2**32 - 1),
                    items=st.lists(advice_items, min_size=1, max_size=5))
acks = st.builds(ix.StandInAdviceAck, acquirer=cities, req=st.integers(0, 2**32 - 1), items=st.lists(
    st.builds(ix.AdviceAckItem, terminal_id=u31, seq=u32, decision=st.integers(0, 1), code=codes,
              replay=st.booleans()), min_size=1, max_size=5))
nonces, sigs = st.binary(min_size=16, max_size=16), st.binary(min_size=64, max_size=64)
from_acquirer = st.one_of(taps, advices, st.builds(ix.Hello, city=cities, nonce=nonces),
                          st.builds(ix.Auth, signature=sigs), st.builds(ix.Ping, time_ms=times))
from_issuer = st.one_of(answers, acks, st.builds(ix.HelloOk, city=cities, nonce=nonces, signature=sigs),
                        st.builds(ix.AuthOk, server_time_ms=times, heartbeat_ms=st.integers(1000, 600_000)),
                        st.builds(ix.Pong, time_ms=times, server_time_ms=times),
                        st.builds(ix.Error, code=codes, message=st.text(max_size=200)))


@settings(max_examples=150, deadline=None)
@given(from_acquirer, st.integers(1, 50))
def test_acquirer_messages_round_trip_in_any_chunking(msg: ix.LinkMessage, chunk: int) -> None:
    frame = ix.encode(msg)
    reader = ix.LinkReader(issuer_side=True)
    got = [m for i in range(0, len(frame), chunk) for m in reader.feed(frame[i : i + chunk])]
    assert got == [msg]


@settings(max_examples=150, deadline=None)
@given(from_issuer)
def test_issuer_messages_round_trip(msg: ix.LinkMessage) -> None:
    assert ix.LinkReader(issuer_side=False).feed(ix.encode(msg) * 2) == [msg, msg]


TAP = {"t": "tap", "acquirer": "HZ", "terminal_id": 1001, "seq": 1, "card": 31_000_000_000_000_179,
       "time_ms": 1_700_000_000_000, "kind": 1, "amount_fen": 200}
ITEM = {"terminal_id": 1001, "seq": 2, "card": 31_000_000_000_000_179, "amount_fen": 200, "time_ms": 1, "kind": 1}


def refused(body: dict[str, object], field: str, issuer_side: bool = True) -> None:
    raw = msgpack.packb(body)
    decode = ix.decode_from_acquirer if issuer_side else ix.decode_from_issuer
    with pytest.raises(RemoteProtocolError) as err:
        decode(raw)
    assert err.value.code == ix.LinkError.BAD_MESSAGE
    assert field in str(err.value), str(err.value)


@pytest.mark.parametrize(("change", "field"), [
    ({"acquirer": "hz"}, "$.acquirer"), ({"acquirer": "H"}, "$.acquirer"), ({"acquirer": "ABCDEFGHI"}, "$.acquirer"),
    ({"terminal_id": 0}, "$.terminal_id"), ({"terminal_id": 2**31}, "$.terminal_id"),
    ({"seq": 0}, "$.seq"), ({"seq": 2**32}, "$.seq"),
    ({"card": 0}, "$.card"), ({"card": 10**18}, "$.card"),
    ({"time_ms": -1}, "$.time_ms"), ({"kind": 0}, "$.kind"), ({"kind": 256}, "$.kind"),
    ({"amount_fen": -1}, "$.amount_fen"), ({"amount_fen": 2**31}, "$.amount_fen"),
    ({"route": -1}, "$.route"), ({"bill_class": 256}, "$.bill_class"),
    ({"amount_fen": 1.5}, "$.amount_fen"), ({"amount_fen": None}, "$.amount_fen"), ({"seq": True}, "$.seq"),
    ({"card": None}, "$.card"),
])
def test_tap_bounds(change: dict[str, object], field: str) -> None:
    refused({**TAP, **change}, field)


def test_missing_field_and_unknown_key() -> None:
    body = dict(TAP)
    del body["amount_fen"]
    refused(body, "amount_fen")
    assert ix.decode_from_acquirer(msgpack.packb({**TAP, "newer": 1})) == ix.RemoteTap(
        acquirer="HZ", terminal_id=1001, seq=1, card=TAP["card"], time_ms=TAP["time_ms"], kind=1, amount_fen=200)


def test_batch_sizes_are_bounded() -> None:
    ok = {"t": "advice", "acquirer": "HZ", "req": 1, "items": [ITEM] * ix.MAX_ADVICE_ITEMS}
    assert len(ix.decode_from_acquirer(msgpack.packb(ok)).items) == 500  # type: ignore[union-attr]
    refused({**ok, "items": [ITEM] * (ix.MAX_ADVICE_ITEMS + 1)}, "$.items")
    refused({**ok, "items": []}, "$.items")
    refused({**ok, "items": [ITEM, {**ITEM, "seq": 0}]}, "$.items[1].seq")
    ack = {"t": "advice_ack", "acquirer": "HZ", "req": 1,
           "items": [{"terminal_id": 1, "seq": 1, "decision": int(max(ix.AdviceDecision)) + 1, "code": 0}]}
    refused(ack, "$.items[0].decision", issuer_side=False)
    refused({**ack, "items": []}, "$.items", issuer_side=False)


@pytest.mark.parametrize(("body", "field", "issuer_side"), [
    ({"t": "hello", "city": "HZ", "nonce": bytes(15)}, "$.nonce", True),
    ({"t": "hello", "city": "HZ", "nonce": "0" * 16}, "$.nonce", True),
    ({"t": "hello", "city": "HZ", "nonce": bytes(16), "version": 0}, "$.version", True),
    ({"t": "hello", "city": "HZ", "nonce": bytes(16), "version": 256}, "$.version", True),
    ({"t": "ping", "time_ms": 2**63}, "$.time_ms", True),
    ({"t": "auth", "signature": bytes(63)}, "$.signature", True),
    ({"t": "hello_ok", "city": "SH", "nonce": bytes(16), "signature": bytes(65)}, "$.signature", False),
    ({"t": "auth_ok", "server_time_ms": 1, "heartbeat_ms": 999}, "$.heartbeat_ms", False),
    ({"t": "tap_answer", "acquirer": "HZ", "terminal_id": 1, "seq": 1, "code": 0x10000, "fare_fen": 0,
      "balance_fen": 0}, "$.code", False),
    ({"t": "tap_answer", "acquirer": "HZ", "terminal_id": 1, "seq": 1, "code": 0, "fare_fen": 0,
      "balance_fen": -(2**31) - 1}, "$.balance_fen", False),
    ({"t": "error", "code": 1, "message": "x" * 201}, "$.message", False),
    ({"t": "tap_answer"}, "Invalid value 'tap_answer'", True),  # the other side's message
    ({"t": "tap"}, "Invalid value 'tap'", False),
    ({"t": "nope"}, "Invalid value 'nope'", True),
    ({"city": "HZ"}, "missing required field `t`", True),
])
def test_other_bounds_and_directions(body: dict[str, object], field: str, issuer_side: bool) -> None:
    refused(body, field, issuer_side)


def test_not_messagepack_and_oversized_frames() -> None:
    with pytest.raises(RemoteProtocolError, match="bad link message from the acquirer") as err:
        ix.decode_from_acquirer(b"\xc1")
    assert err.value.code == ix.LinkError.BAD_MESSAGE
    with pytest.raises(RemoteProtocolError, match="65536-byte limit") as err:
        ix.LinkReader(issuer_side=True).feed((ix.MAX_LINK_FRAME_BYTES + 1).to_bytes(4, "big"))
    assert err.value.code == ix.LinkError.BAD_FRAME
    with pytest.raises(RemoteProtocolError, match="zero-length") as err:
        ix.LinkReader(issuer_side=False).feed(bytes(4))
    assert err.value.code == ix.LinkError.BAD_FRAME


# -- the handshake's signatures ----------------------------------------------------------------
HZ_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SH_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
HZ_PUB, SH_PUB = HZ_KEY.public_key().public_bytes_raw(), SH_KEY.public_key().public_bytes_raw()
NA, NI = bytes(range(0xA0, 0xB0)), bytes(range(0xB0, 0xC0))


def test_both_signatures_verify() -> None:
    issuer_sig = ix.sign_auth(SH_KEY, "SH", "HZ", NI, NA)
    acquirer_sig = ix.sign_auth(HZ_KEY, "HZ", "SH", NA, NI)
    assert ix.verify_auth(SH_PUB, issuer_sig, "SH", "HZ", NI, NA)
    assert ix.verify_auth(HZ_PUB, acquirer_sig, "HZ", "SH", NA, NI)
    # the input is what the doc says, checked with cryptography directly
    message = b"citycard/interop-auth/v1" + b"\x02SH" + b"\x02HZ" + NA + NI
    SH_KEY.public_key().verify(issuer_sig, message)


@pytest.mark.parametrize("forgery", ["other key", "flipped bit", "old nonce", "reflected", "wrong peer",
                                     "bad public key"])
def test_forged_signatures_fail(forgery: str) -> None:
    issuer_sig = ix.sign_auth(SH_KEY, "SH", "HZ", NI, NA)
    pub, sig, args = SH_PUB, issuer_sig, ("SH", "HZ", NI, NA)
    if forgery == "other key":  # HZ signs as if it were SH
        sig = ix.sign_auth(HZ_KEY, "SH", "HZ", NI, NA)
    elif forgery == "flipped bit":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    elif forgery == "old nonce":  # a signature over another session's acquirer nonce
        args = ("SH", "HZ", NI, bytes(16))
    elif forgery == "reflected":  # SH's own signature returned as though the acquirer's
        pub, args = HZ_PUB, ("HZ", "SH", NA, NI)
    elif forgery == "wrong peer":
        args = ("SH", "NB", NI, NA)
    elif forgery == "bad public key":
        pub = bytes(31)
    assert not ix.verify_auth(pub, sig, *args)


def test_auth_input_refuses_short_nonces() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        ix.auth_input("SH", "HZ", bytes(15), NA)


# -- docs/interop.md's vectors -----------------------------------------------------------------
@pytest.fixture(scope="module")
def iv() -> ModuleType:
    spec = importlib.util.spec_from_file_location("interop_vectors", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("interop_vectors", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_the_section_is_in_the_document_verbatim(iv: ModuleType, doc: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    section = iv.render()
    assert section in doc, "docs/interop.md is stale: run scripts/interop_vectors.py --write"
    assert doc.count(iv.BEGIN) == 1 and doc.count(iv.END) == 1
    assert iv.replace_section(doc, section) == doc
    assert iv.main([]) == 0 and capsys.readouterr().out == section


def doc_frames(doc: str) -> list[tuple[str, str, bytes]]:
    pattern = r"#### \d+\. (A->I|I->A) ([^\n]+)\n\nMap: `[^\n]*`\n\n```\n([0-9a-f \n]+)```"
    return [(d, t, bytes.fromhex(h.replace("\n", " "))) for d, t, h in re.findall(pattern, doc)]


def test_doc_frames_decode_and_say_what_the_headings_say(doc: str) -> None:
    frames = doc_frames(doc)
    bodies = []
    for direction, title, frame in frames:
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4, title
        decode = ix.decode_from_acquirer if direction == "A->I" else ix.decode_from_issuer
        msg = decode(frame[4:])
        assert ix.encode(msg) == frame, title  # the code re-encodes the same bytes
        bodies.append(msgpack.unpackb(frame[4:]))
    assert [b["t"] for b in bodies] == ["hello", "hello_ok", "auth", "auth_ok", "tap", "tap_answer", "tap",
                                        "tap_answer", "advice", "advice_ack", "advice", "advice_ack", "ping", "pong",
                                        "error", "error"]
    hello, hello_ok, auth = bodies[0], bodies[1], bodies[2]
    # the signatures, checked with cryptography against the keys the doc's registry example lists
    [region] = [tomllib.loads(block)["region"] for block in re.findall(r"```toml\n(.*?)```", doc, re.S)]
    reg = registry_from_dict(region)
    hz, sh = reg.by_code(hello["city"]), reg.by_code(hello_ok["city"])
    assert hz is not None and sh is not None
    Ed25519PublicKey.from_public_bytes(sh.link_public_key).verify(
        hello_ok["signature"], b"citycard/interop-auth/v1\x02SH\x02HZ" + hello["nonce"] + hello_ok["nonce"])
    Ed25519PublicKey.from_public_bytes(hz.link_public_key).verify(
        auth["signature"], b"citycard/interop-auth/v1\x02HZ\x02SH" + hello_ok["nonce"] + hello["nonce"])
    tap, answer, retry, replay = bodies[4:8]
    assert tap == retry and reg.issuer_of(tap["card"]) is sh
    key = ("acquirer", "terminal_id", "seq")
    assert [answer[k] for k in key] == [tap[k] for k in key] and answer["code"] == Result.OK
    assert answer["fare_fen"] == tap["amount_fen"] and replay == {**answer, "replay": True}
    advice, ack = bodies[8], bodies[9]
    assert [(i["terminal_id"], i["seq"]) for i in ack["items"]] == [(i["terminal_id"], i["seq"]) for i in advice["items"]]
    assert [(i["decision"], i["code"]) for i in ack["items"]] == [(0, Result.OK), (1, Result.CARD_BLOCKED)]

