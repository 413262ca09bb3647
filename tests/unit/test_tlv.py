"""BER-TLV: tags and lengths of every size, padding, bounds, malformed input named, round
trips, and the FCI of a SELECT."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citycard.protocols.tlv import (
    MAX_DEPTH,
    Fci,
    Tlv,
    TlvError,
    constructed,
    encode,
    encode_all,
    is_constructed,
    length_bytes,
    parse,
    parse_fci,
    primitive,
    tag_bytes,
)

PSE_FCI = "6F15840E315041592E5359532E4444463031A503880101"
# a PBOC e-purse ADF: AID A00000000386980701, version 02, issuer data with the log entry 9F4D
ADF_FCI = "6F198409A00000000386980701A50C9F080102BF0C059F4D020B0A"


def test_primitive_and_constructed() -> None:
    assert parse(bytes.fromhex("5A0412345678")) == (Tlv(0x5A, bytes.fromhex("12345678")),)
    (item,) = parse(bytes.fromhex("70055A03010203"))
    assert item.constructed and item.children == (Tlv(0x5A, b"\x01\x02\x03"),)
    assert item.find(0x5A) == Tlv(0x5A, b"\x01\x02\x03") and item.find(0x57) is None


@pytest.mark.parametrize(("tag", "hex_", "is_cons"), [
    (0x84, "84", False),
    (0x6F, "6F", True),
    (0x9F08, "9F08", False),
    (0xBF0C, "BF0C", True),
    (0x5F2D, "5F2D", False),
    (0xDF8101, "DF8101", False),
    (0x7F21, "7F21", True),
    (0x1F818201, "1F818201", False),
])
def test_tags(tag: int, hex_: str, is_cons: bool) -> None:
    assert tag_bytes(tag).hex().upper() == hex_
    assert is_constructed(tag) is is_cons
    assert parse(bytes.fromhex(hex_ + "00")) == (Tlv(tag, b""),)


@pytest.mark.parametrize(("length", "hex_"), [
    (0, "00"), (0x7F, "7F"), (0x80, "8180"), (0xFF, "81FF"), (0x100, "820100"),
    (0x10000, "83010000"), (0xFFFFFFFF, "84FFFFFFFF"),
])
def test_lengths(length: int, hex_: str) -> None:
    assert length_bytes(length).hex().upper() == hex_


def test_long_lengths_parse() -> None:
    value = b"\xAB" * 300
    for prefix in ("04820" + "12C", "04830" + "0012C", "0484" + "0000012C"):
        assert parse(bytes.fromhex(prefix) + value) == (Tlv(0x04, value),)
    assert parse(bytes.fromhex("048105") + b"12345") == (Tlv(0x04, b"12345"),)  # not minimal: BER allows


def test_padding_between_objects_is_skipped() -> None:
    raw = bytes.fromhex("00FF5A0101" "0000" "70045A01020000FF" "FF")
    assert [t.tag for t in parse(raw)] == [0x5A, 0x70]
    assert parse(raw)[1].children == (Tlv(0x5A, b"\x02"),)
    assert parse(b"\x00\xff\x00") == ()


@pytest.mark.parametrize(("hex_", "fault"), [
    ("5A", "tag 5A: length missing"),
    ("5A0412", "tag 5A: value of 4 bytes truncated to 1"),
    ("9F", "tag truncated at offset 0"),
    ("9F8182", "tag truncated at offset 0"),
    ("9F81828384", "longer than 4 bytes"),
    ("5A80", "indefinite length"),
    ("5A85000000000001", "length of 5 bytes exceeds 4"),
    ("5A8201", "length field truncated"),
    ("5A84FFFFFFFF00", "value of 4294967295 bytes truncated to 1"),
    ("70035A0201", "tag 5A: value of 2 bytes truncated to 1"),  # inside a constructed object
])
def test_malformed_tlv_is_named(hex_: str, fault: str) -> None:
    with pytest.raises(TlvError, match=fault):
        parse(bytes.fromhex(hex_))


def _nested(depth: int) -> bytes:
    raw = encode(primitive(0x5A, b"\x01"))
    for _ in range(depth - 1):
        raw = encode(Tlv(0x70, raw))
    return raw


def test_depth_is_bounded() -> None:
    assert parse(_nested(MAX_DEPTH))
    with pytest.raises(TlvError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse(_nested(MAX_DEPTH + 1))


def test_items_are_bounded() -> None:
    raw = b"\x5a\x00" * 11
    assert len(parse(raw, max_items=11)) == 11
    with pytest.raises(TlvError, match="more than 10 TLV objects"):
        parse(raw, max_items=10)


@pytest.mark.parametrize(("call", "fault"), [
    (lambda: tag_bytes(0), "tag must be positive"),
    (lambda: tag_bytes(0x9F), "not a well-formed BER tag"),  # says more bytes follow
    (lambda: tag_bytes(0x5A01), "not a well-formed BER tag"),  # says none follow
    (lambda: tag_bytes(0x9F8181), "not a well-formed BER tag"),  # last byte says more follow
    (lambda: tag_bytes(0xFF01), "padding byte"),
    (lambda: tag_bytes(0x1F81818101), "longer than 4 bytes"),
    (lambda: length_bytes(2**32), "more than 4 length bytes"),
    (lambda: primitive(0x70, b""), "tag 70 is constructed"),
    (lambda: constructed(0x5A), "tag 5A is primitive"),
])
def test_bad_encode_arguments(call: object, fault: str) -> None:
    with pytest.raises(TlvError, match=fault):
        call()  # type: ignore[operator]


# -- round trips -----------------------------------------------------------------------------
def _tag(cons: bool) -> st.SearchStrategy[int]:
    bit = 0x20 if cons else 0

    def one(first: int) -> int:
        return first | bit

    single = st.sampled_from([b for b in range(1, 0x1F)] + [b | 0x40 for b in range(0x1F)]).map(one)
    double = st.tuples(st.sampled_from([0x1F, 0x5F, 0x9F]), st.integers(0x01, 0x7F)).map(
        lambda t: (one(t[0]) << 8) | t[1])
    return st.one_of(single, double)


def _tlvs() -> st.SearchStrategy[Tlv]:
    leaf = st.builds(primitive, _tag(False), st.binary(max_size=300))
    return st.recursive(
        leaf,
        lambda kids: st.builds(lambda tag, cs: constructed(tag, *cs), _tag(True),
                               st.lists(kids, max_size=4)),
        max_leaves=20,
    )


@given(st.lists(_tlvs(), max_size=5))
def test_tlv_round_trip(items: list[Tlv]) -> None:
    raw = encode_all(items)
    assert parse(raw) == tuple(items)
    assert encode_all(parse(raw)) == raw


@given(st.binary(max_size=400))
def test_parse_accepts_or_names_the_fault(raw: bytes) -> None:
    try:
        parse(raw)
    except TlvError as e:
        assert str(e)


# -- FCI ---------------------------------------------------------------------------------------
def test_fci_of_the_pse() -> None:
    assert parse_fci(bytes.fromhex(PSE_FCI)) == Fci(
        df_name=b"1PAY.SYS.DDF01", sfi=1, app_version=None, issuer_data=(),
        proprietary=(Tlv(0x88, b"\x01"),))


def test_fci_of_an_epurse_adf() -> None:
    fci = parse_fci(bytes.fromhex(ADF_FCI))
    assert fci.df_name == bytes.fromhex("A00000000386980701")
    assert (fci.sfi, fci.app_version) == (None, b"\x02")
    assert fci.issuer_data == (Tlv(0x9F4D, b"\x0b\x0a"),)


def test_fci_built_with_the_builders_matches_the_vector() -> None:
    built = constructed(0x6F, primitive(0x84, bytes.fromhex("A00000000386980701")), constructed(
        0xA5, primitive(0x9F08, b"\x02"), constructed(0xBF0C, primitive(0x9F4D, b"\x0b\x0a"))))
    assert encode(built).hex().upper() == ADF_FCI


@pytest.mark.parametrize(("hex_", "fault"), [
    ("", "one 6F template, got tags \\[\\]"),
    ("7000", "one 6F template, got tags \\['70'\\]"),
    (PSE_FCI + "5A00", "one 6F template"),
    ("6F05A503880101", "without a DF name"),
    ("6F03840101", "without a proprietary template"),
    ("6F08840101A503880100", "SFI \\(88\\) must be one byte 1..30, got 00"),
    ("6F09840101A50488020101", "SFI \\(88\\) must be one byte 1..30, got 0101"),
    ("6F0184", "tag 84: length missing"),
])
def test_bad_fci_is_named(hex_: str, fault: str) -> None:
    with pytest.raises(TlvError, match=fault):
        parse_fci(bytes.fromhex(hex_))


def test_an_empty_template_at_the_last_level_is_not_too_deep() -> None:
    raw = encode(Tlv(0x70, b""))
    for _ in range(MAX_DEPTH - 1):
        raw = encode(Tlv(0x70, raw))
    assert parse(raw)
