"""Who is asking, as an address: the peer, or, behind a configured reverse proxy, the client
the proxy names in X-Forwarded-For (the right-most address no trusted proxy added).

An IPv6 client is its /64: one subscriber line usually gets a whole /64, and counting each of
its 2^64 addresses apart would make a per-source limit no limit."""

import ipaddress
from collections.abc import Sequence

from starlette.requests import HTTPConnection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_HOPS = 20


def _trusted(addr: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def _as_source(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


def _source(addr: str) -> str:
    try:
        return _as_source(addr)
    except ValueError:
        return addr  # not an address (a test client, a Unix socket): counted by what it is


def source_of(conn: HTTPConnection, proxies: Sequence[Network]) -> str:
    peer = conn.client.host if conn.client is not None else "unknown"
    if not proxies or not _trusted(peer, proxies):
        return _source(peer)
    hops = [h.strip() for h in conn.headers.get("x-forwarded-for", "").split(",")][-_MAX_HOPS:]
    for hop in reversed(hops):
        if hop and not _trusted(hop, proxies):
            return _source(hop) if _valid(hop) else _source(peer)  # a proxy passing garbage pays for it
    return _source(peer)


def _valid(addr: str) -> bool:
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return False
    return True
