"""The source a limit counts: the peer, or behind a trusted proxy the client it names."""

import ipaddress

from starlette.requests import Request

from citycard.api.source import source_of

PROXY = [ipaddress.ip_network("10.0.0.0/8")]


def request(peer: str, xff: str | None = None) -> Request:
    headers = [(b"x-forwarded-for", xff.encode())] if xff is not None else []
    return Request({"type": "http", "client": (peer, 5000), "headers": headers})


def test_an_untrusted_peer_cannot_pick_its_source():
    assert source_of(request("203.0.113.9", "198.51.100.1"), PROXY) == "203.0.113.9"
    assert source_of(request("203.0.113.9", "198.51.100.1"), []) == "203.0.113.9"


def test_behind_a_trusted_proxy_the_right_most_untrusted_hop_counts():
    # the client may prepend anything; only what the proxies appended is believed
    assert source_of(request("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.3"), PROXY) == "198.51.100.7"
    assert source_of(request("10.0.0.2"), PROXY) == "10.0.0.2"  # no header: the proxy itself
    assert source_of(request("10.0.0.2", "10.0.0.5"), PROXY) == "10.0.0.2"
    assert source_of(request("10.0.0.2", "not-an-ip"), PROXY) == "10.0.0.2"  # garbage counts against the proxy


def test_an_ipv6_client_is_its_slash_64():
    a = source_of(request("2001:db8:1:2::1"), [])
    b = source_of(request("2001:db8:1:2:ffff::9"), [])
    assert a == b == "2001:db8:1:2::/64"
    assert source_of(request("2001:db8:1:3::1"), []) != a
    assert source_of(request("::ffff:198.51.100.7"), []) == "198.51.100.7"
    assert source_of(request("10.0.0.2", "2001:db8:9:9::5"), PROXY) == "2001:db8:9:9::/64"


def test_an_ipv6_proxy_is_trusted_by_its_address():
    proxies = [ipaddress.ip_network("2001:db8:ff::/48")]
    assert source_of(request("2001:db8:ff::1", "198.51.100.7"), proxies) == "198.51.100.7"
