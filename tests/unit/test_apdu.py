"""ISO 7816-4 APDUs: hex vectors for every case, malformed input named, round trips, status
words and the 61xx/6Cxx follow-ups."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citycard.protocols.apdu import (
    MAX_FOLLOW_UPS,
    ApduError,
    Command,
    Exchange,
    Response,
    StatusError,
    StatusWord,
    describe,
    follow_up,
    get_balance,
    get_challenge,
    get_response,
    parse_command,
    parse_response,
    read_binary,
    read_record,
    select_by_aid,
    select_by_file_id,
)

PSE = b"1PAY.SYS.DDF01"


@pytest.mark.parametrize(("command", "hex_"), [
    (Command(0x00, 0x70, 0x00, 0x00), "00700000"),  # case 1: MANAGE CHANNEL
    (Command(0x00, 0x84, 0x00, 0x00, le=8), "0084000008"),  # case 2S
    (Command(0x00, 0xC0, 0x00, 0x00, le=256), "00C0000000"),  # case 2S, Le 00 is 256
    (Command(0x00, 0x20, 0x00, 0x00, b"\x12\x34"), "00200000021234"),  # case 3S
    (select_by_aid(PSE), "00A404000E315041592E5359532E444446303100"),  # case 4S
    (Command(0x00, 0xB0, 0x00, 0x00, le=257), "00B00000000101"),  # case 2E
    (Command(0x00, 0xB0, 0x00, 0x00, le=65536), "00B00000000000"),  # case 2E, 0000 is 65536
    (Command(0x00, 0xD6, 0x00, 0x00, b"\xAA" * 256), "00D6000000" + "0100" + "AA" * 256),  # 3E
    (Command(0x00, 0xD6, 0x00, 0x00, b"\xAA", le=300), "00D60000000001AA012C"),  # case 4E
    (Command(0x00, 0x84, 0x00, 0x00, le=8, extended=True), "00840000000008"),  # forced 2E
])
def test_vectors_encode_and_parse(command: Command, hex_: str) -> None:
    raw = bytes.fromhex(hex_)
    assert command.encode() == raw
    assert parse_command(raw) == command


@pytest.mark.parametrize(("command", "hex_"), [
    (get_balance(), "805C000204"),
    (get_balance(0x01), "805C000104"),
    (get_challenge(), "0084000004"),
    (get_challenge(8), "0084000008"),
    (get_response(0x1C), "00C000001C"),
    (select_by_file_id(0x3F00), "00A40000023F0000"),
    (select_by_aid(bytes.fromhex("A00000000386980701")), "00A4040009A0000000038698070100"),
    (read_binary(), "00B0000000"),
    (read_binary(0x0102, le=16), "00B0010210"),
    (read_binary(8, sfi=0x15, le=30), "00B095081E"),
    (read_record(1, sfi=0x18), "00B201C400"),  # SFI 18: the PBOC transaction log
    (read_record(3), "00B2030400"),
])
def test_card_application_commands(command: Command, hex_: str) -> None:
    assert command.encode().hex().upper() == hex_


def test_cases() -> None:
    assert [c.case for c in (Command(0, 0xA4, 0, 0), Command(0, 0xA4, 0, 0, le=1),
                             Command(0, 0xA4, 0, 0, b"x"), Command(0, 0xA4, 0, 0, b"x", 1))] == [1, 2, 3, 4]


@pytest.mark.parametrize(("hex_", "fault"), [
    ("", "shorter than its 4-byte header"),
    ("00A404", "shorter than its 4-byte header"),
    ("00A404000E3150", "short Lc 14 does not match the 2 bytes"),
    ("00A40400023F00AABB", "short Lc 2 does not match the 4 bytes"),
    ("00A4040000", None),  # case 2S with Le 00: valid
    ("00A404000001", "extended length field truncated"),
    ("00A40400000000AA", "extended Lc of 0"),
    ("00A4040000000311", "extended Lc 3 does not match the 1 bytes"),
    ("FFA40400", "CLA FF"),
    ("0061 0000".replace(" ", ""), "INS 61 is invalid"),
    ("00900000", "INS 90 is invalid"),
])
def test_malformed_commands_are_named(hex_: str, fault: str | None) -> None:
    raw = bytes.fromhex(hex_)
    if fault is None:
        parse_command(raw)
        return
    with pytest.raises(ApduError, match=fault):
        parse_command(raw)


@pytest.mark.parametrize(("kwargs", "fault"), [
    ({"cla": 256}, "CLA must be one byte"),
    ({"p1": -1}, "P1 must be one byte"),
    ({"data": b"x" * 65536}, "data of 65536 bytes exceeds 65535"),
    ({"le": 0}, "Le .* must be 1..65536"),
    ({"le": 65537}, "Le .* must be 1..65536"),
    ({"extended": True}, "case 1 command"),
])
def test_bad_command_arguments(kwargs: dict[str, object], fault: str) -> None:
    fields: dict[str, object] = {"cla": 0, "ins": 0xA4, "p1": 0, "p2": 0, **kwargs}
    with pytest.raises(ApduError, match=fault):
        Command(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("call", "fault"), [
    (lambda: select_by_aid(b""), "AID must be 1..16"),
    (lambda: select_by_aid(b"x" * 17), "AID must be 1..16"),
    (lambda: select_by_file_id(0x10000), "file id"),
    (lambda: read_binary(0x8000), "offset must be 0..32767"),
    (lambda: read_binary(256, sfi=1), "offset with an SFI"),
    (lambda: read_binary(sfi=31), "SFI must be 1..30"),
    (lambda: read_record(0, sfi=1), "record number"),
    (lambda: read_record(1, sfi=0), "SFI must be 1..30"),
    (lambda: get_response(0), "GET RESPONSE length"),
    (lambda: get_balance(3), "GET BALANCE P2"),
    (lambda: get_challenge(257), "challenge length"),
])
def test_bad_constructor_arguments(call: object, fault: str) -> None:
    with pytest.raises(ApduError, match=fault):
        call()  # type: ignore[operator]


_BYTE = st.integers(0, 255)
_INS = _BYTE.filter(lambda i: i & 0xF0 not in (0x60, 0x90))
_COMMANDS = st.builds(
    Command,
    cla=st.integers(0, 254),
    ins=_INS,
    p1=_BYTE,
    p2=_BYTE,
    data=st.one_of(st.binary(max_size=300), st.binary(min_size=65530, max_size=65535)),
    le=st.one_of(st.none(), st.integers(1, 65536)),
)


@given(_COMMANDS)
def test_command_round_trip(command: Command) -> None:
    raw = command.encode()
    assert parse_command(raw) == command
    assert parse_command(raw).encode() == raw


@given(st.binary(max_size=600))
def test_parse_command_accepts_or_names_the_fault(raw: bytes) -> None:
    try:
        command = parse_command(raw)
    except ApduError as e:
        assert str(e)
    else:
        assert command.encode() == raw


def test_responses() -> None:
    r = parse_response(bytes.fromhex("000003E89000"))
    assert (r.data, r.sw, r.sw1, r.sw2, r.ok) == (bytes.fromhex("000003E8"), 0x9000, 0x90, 0x00, True)
    assert r.check() == bytes.fromhex("000003E8")
    assert parse_response(b"\x6a\x82") == Response(b"", StatusWord.FILE_NOT_FOUND)
    for short in (b"", b"\x90"):
        with pytest.raises(ApduError, match=f"response of {len(short)} bytes has no status word"):
            parse_response(short)
    with pytest.raises(StatusError, match="card answered 9401: insufficient balance") as e:
        parse_response(b"\x94\x01").check()
    assert e.value.sw == 0x9401
    with pytest.raises(ApduError, match="status word must be two bytes"):
        Response(b"", 0x10000)


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_response_round_trip(data: bytes, sw: int) -> None:
    assert parse_response(Response(data, sw).encode()) == Response(data, sw)


@pytest.mark.parametrize(("sw", "text"), [
    (0x9000, "OK"),
    (0x6982, "security status not satisfied"),
    (0x6983, "authentication method blocked"),
    (0x6985, "conditions of use not satisfied"),
    (0x6A82, "file not found"),
    (0x6A83, "record not found"),
    (0x6A86, "incorrect P1P2"),
    (0x6D00, "INS not supported"),
    (0x6E00, "CLA not supported"),
    (0x9302, "MAC invalid (PBOC)"),
    (0x9303, "application locked (PBOC)"),
    (0x9401, "insufficient balance (PBOC)"),
    (0x9403, "key index not supported (PBOC)"),
    (0x9406, "required MAC unavailable (PBOC)"),
    (0x611C, "more data: 28 bytes available"),
    (0x6100, "more data: 256 bytes available"),
    (0x6C04, "wrong Le: exact length is 4"),
    (0x6C00, "wrong Le: exact length is 256"),
    (0x63C2, "verify failed: 2 tries left"),
    (0x63C0, "verify failed: 0 tries left"),
    (0x6A99, "unknown status word 0x6A99"),
    (0x0000, "unknown status word 0x0000"),
    (0x10000, "not a status word: 65536"),
    (-1, "not a status word: -1"),
])
def test_describe(sw: int, text: str) -> None:
    assert describe(sw) == text


def test_every_status_word_has_a_meaning() -> None:
    for sw in StatusWord:
        assert sw.meaning
        assert not describe(sw).startswith("unknown")


@given(st.integers(-(2**20), 2**20))
def test_describe_never_raises(sw: int) -> None:
    assert describe(sw)


def test_follow_up_61xx_is_get_response() -> None:
    select = select_by_aid(PSE)
    assert follow_up(select, Response(b"", 0x611C)).encode().hex().upper() == "00C000001C"  # type: ignore[union-attr]
    assert follow_up(select, Response(b"", 0x6100)) == get_response(256)


def test_follow_up_6cxx_resends_with_exact_le() -> None:
    read = read_record(1, sfi=0x18)
    again = follow_up(read, Response(b"", 0x6C17))
    assert again is not None and again.encode().hex().upper() == "00B201C417"
    # a case 3 command gains an Le: it becomes case 4
    assert follow_up(Command(0, 0xA4, 0, 0, b"\x3f\x00"), Response(b"", 0x6C10)) == Command(
        0, 0xA4, 0, 0, b"\x3f\x00", 16)


@pytest.mark.parametrize("sw", [0x9000, 0x6A82, 0x63C1, 0x9401])
def test_no_follow_up_on_final_words(sw: int) -> None:
    assert follow_up(get_balance(), Response(b"", sw)) is None


def test_exchange_joins_get_response_rounds() -> None:
    ex = Exchange(select_by_aid(PSE))
    assert ex.receive(Response(b"", 0x6104)) == get_response(4)
    assert ex.receive(Response(b"\x6f\x02", 0x6102)) == get_response(2)
    assert ex.receive(Response(b"\x84\x00", 0x9000)) == Response(b"\x6f\x02\x84\x00", 0x9000)


def test_exchange_resends_on_6cxx() -> None:
    ex = Exchange(get_balance())
    assert ex.receive(Response(b"", 0x6C04)) == get_balance()
    assert ex.command == get_balance()
    assert ex.receive(Response(b"\x00\x00\x03\xe8", 0x9000)) == Response(b"\x00\x00\x03\xe8", 0x9000)


def test_exchange_refuses_a_card_that_never_finishes() -> None:
    ex = Exchange(get_balance())
    for _ in range(MAX_FOLLOW_UPS):
        ex.receive(Response(b"", 0x6101))
    with pytest.raises(ApduError, match=f"after {MAX_FOLLOW_UPS} rounds"):
        ex.receive(Response(b"", 0x6101))
