"""The issuer registry: lookups by card number, each refusal, and the TOML loader's errors."""

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.config.issuers import registry_from_dict
from citycard.domain.cards import make_card_no
from citycard.domain.issuers import MAX_ISSUERS, Issuer, IssuerRegistry, parse_link_address
from citycard.domain.offline import IssuerKeys
from citycard.errors import ConfigError


def link_key(n: int) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(n.to_bytes(32, "big")).public_key().public_bytes_raw()


def issuer(code: str, prefix: int, n: int, floor_fen: int = 2000) -> Issuer:
    return Issuer(code, f"city {code}", prefix, f"{code.lower()}.example", 7800, link_key(n), floor_fen)


HZ, SH, NB = issuer("HZ", 330100, 1), issuer("SH", 310000, 2), issuer("NB", 330200, 3)


def test_cards_find_their_issuer() -> None:
    reg = IssuerRegistry([HZ, SH, NB], own="HZ")
    assert reg.own is HZ and len(reg) == 3 and list(reg) == [HZ, SH, NB]
    assert reg.issuer_of(make_card_no(17, 330100)) is HZ
    assert reg.issuer_of(make_card_no(9_999_999_999, 310000)) is SH
    assert reg.issuer_of(make_card_no(1, 330200)) is NB
    assert reg.issuer_of(make_card_no(1, 110000)) is None  # Beijing: not registered
    assert reg.issuer_of(0) is None and reg.issuer_of(-5) is None
    assert reg.is_own(make_card_no(5)) and not reg.is_own(make_card_no(5, 310000))
    assert reg.others() == [SH, NB]
    assert reg.by_code("SH") is SH and reg.by_code("XX") is None


def test_digit_prefixes_of_each_other_do_not_clash() -> None:
    # 3301 numbers 15-digit cards, 330100 17-digit ones: the serial width tells them apart.
    short = issuer("HX", 3301, 4)
    reg = IssuerRegistry([HZ, short], own="HZ")
    assert str(make_card_no(7, 330100)).startswith("3301")
    assert reg.issuer_of(make_card_no(7, 330100)) is HZ
    assert reg.issuer_of(make_card_no(7, 3301)) is short


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 10**7 - 1), min_size=1, max_size=20, unique=True),
       st.integers(0, 10**10 - 1))
def test_every_registered_prefix_routes_its_cards(prefixes: list[int], serial: int) -> None:
    issuers = [issuer(f"C{i}", p, i + 1) for i, p in enumerate(prefixes)]
    reg = IssuerRegistry(issuers, own="C0")
    for i in issuers:
        assert reg.issuer_of(make_card_no(serial, i.card_prefix)) is i


@pytest.mark.parametrize(("issuers", "own", "message"), [
    ([HZ, dataclasses.replace(SH, code="HZ")], "HZ", r"issuers\[1\]\.code: HZ is listed twice"),
    ([HZ, dataclasses.replace(SH, card_prefix=330100)], "HZ", r"issuers\[1\]\.card_prefix: 330100 is already HZ's"),
    ([HZ, dataclasses.replace(SH, link_public_key=HZ.link_public_key)], "HZ",
     r"issuers\[1\]\.link_public_key: already HZ's"),
    ([HZ, SH], "NB", "own: NB is not among the issuers"),
    ([HZ], "hz", "own must be"),
    ([], "HZ", "1..1000 issuers, got 0"),
])
def test_registry_refusals(issuers: list[Issuer], own: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IssuerRegistry(issuers, own)


def test_registry_count_is_bounded() -> None:
    many = [issuer(f"C{i}", 100 + i, i + 1) for i in range(MAX_ISSUERS + 1)]
    assert len(IssuerRegistry(many[:MAX_ISSUERS], own="C0")) == MAX_ISSUERS
    with pytest.raises(ValueError, match="1..1000 issuers, got 1001"):
        IssuerRegistry(many, own="C0")


@pytest.mark.parametrize(("change", "message"), [
    ({"code": "H"}, "code must be"), ({"code": "hz"}, "code must be"), ({"code": "HZHZHZHZH"}, "code must be"),
    ({"name": ""}, "name must be"), ({"name": "x" * 65}, "name must be"),
    ({"card_prefix": 0}, "card_prefix must be an integer 1..9999999"),
    ({"card_prefix": 10**7}, "card_prefix must be"), ({"card_prefix": True}, "card_prefix must be"),
    ({"link_host": ""}, "link host"), ({"link_host": "a b"}, "link host"),
    ({"link_port": 0}, "link port"), ({"link_port": 65536}, "link port"),
    ({"link_public_key": bytes(31)}, "32 bytes"),
    ({"floor_limit_fen": -1}, "floor_limit_fen must be an integer 0..10000000"),
    ({"floor_limit_fen": 10_000_001}, "floor_limit_fen"),
    ({"tac_keys": "keys"}, "tac_keys"),
])
def test_issuer_field_bounds(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(HZ, **change)


def test_link_addresses() -> None:
    assert parse_link_address("hz.example:7800") == ("hz.example", 7800)
    assert parse_link_address("[::1]:7800") == ("::1", 7800)
    assert dataclasses.replace(HZ, link_host="::1").link_address == "[::1]:7800"
    assert HZ.link_address == "hz.example:7800"
    for bad in ("hz.example", "hz.example:0", "hz.example:http", ":7800", "hz:99999"):
        with pytest.raises(ValueError, match="link"):
            parse_link_address(bad)


KEYS = ("000102030405060708090A0B0C0D0E0F", "101112131415161718191A1B1C1D1E1F", "F0E0D0C0B0A090807060504030201000")


def region() -> dict[str, object]:
    return {"own": "HZ", "issuers": [
        {"code": "HZ", "name": "Hangzhou", "card_prefix": 330100, "link": "hz.example:7800",
         "link_public_key_hex": link_key(1).hex(), "floor_limit_fen": 2000,
         "tac_keys": {"mpk_hex": KEYS[0], "mlk_hex": KEYS[1], "mtk_hex": KEYS[2]}},
        {"code": "SH", "name": "Shanghai", "card_prefix": 310000, "link": "10.0.0.2:7801",
         "link_public_key_hex": link_key(2).hex(), "floor_limit_fen": 1500},
    ]}


def test_loader_builds_the_registry() -> None:
    reg = registry_from_dict(region())
    hz, sh = reg.by_code("HZ"), reg.by_code("SH")
    assert hz is not None and sh is not None and reg.own is hz
    assert hz.tac_keys == IssuerKeys.of_hex(*KEYS) and sh.tac_keys is None
    assert (sh.link_host, sh.link_port, sh.floor_limit_fen, sh.link_public_key) == ("10.0.0.2", 7801, 1500, link_key(2))


def _broken(path: tuple[str | int, ...], value: object) -> dict[str, object]:
    raw = region()
    node: object = raw
    for part in path[:-1]:
        node = node[part]  # type: ignore[index]
    if value is KeyError:
        del node[path[-1]]  # type: ignore[attr-defined]
    else:
        node[path[-1]] = value  # type: ignore[index]
    return raw


@pytest.mark.parametrize(("path", "value", "message"), [
    (("issuers", 1, "card_prefix"), 0, r"region\.issuers\[1\]\.card_prefix: Input should be greater"),
    (("issuers", 1, "card_prefix"), "310000", r"region\.issuers\[1\]\.card_prefix: Input should be a valid int"),
    (("issuers", 1, "card_prefix"), 330100, r"region\.issuers\[1\]\.card_prefix: 330100 is already HZ's"),
    (("issuers", 0, "link"), "hz.example", r"region\.issuers\[0\]\.link: .*host:port"),
    (("issuers", 0, "link_public_key_hex"), "zz", r"region\.issuers\[0\]\.link_public_key_hex: .*hexadecimal"),
    (("issuers", 0, "link_public_key_hex"), "00" * 31, r"link_public_key_hex: .*32 bytes"),
    (("issuers", 1, "floor_limit_fen"), -1, r"region\.issuers\[1\]\.floor_limit_fen"),
    (("issuers", 1, "floor_limit_fen"), KeyError, r"region\.issuers\[1\]\.floor_limit_fen: Field required"),
    (("issuers", 1, "colour"), "red", r"region\.issuers\[1\]\.colour: Extra inputs"),
    (("issuers", 1, "code"), "HZ", r"region\.issuers\[1\]\.code: HZ is listed twice"),
    (("own",), "NB", r"region\.own: NB is not among the issuers"),
    (("issuers", 0, "tac_keys"), {"mpk_hex": "00", "mlk_hex": KEYS[1], "mtk_hex": KEYS[2]},
     r"region\.issuers\[0\]: purchase master key must be 16 bytes"),
])
def test_loader_names_the_field(path: tuple[str | int, ...], value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry_from_dict(_broken(path, value))
