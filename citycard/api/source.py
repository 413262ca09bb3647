"""Who is asking, as an address: the peer, or, behind a configured reverse proxy, the client
the proxy names in X-Forwarded-For (the right-most address no trusted proxy added)."""

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


def source_of(conn: HTTPConnection, proxies: Sequence[Network]) -> str:
    peer = conn.client.host if conn.client is not None else "unknown"
    if not proxies or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in conn.headers.get("x-forwarded-for", "").split(",")][-_MAX_HOPS:]
    for hop in reversed(hops):
        if hop and not _trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a proxy passed on garbage: count it against the proxy
    return peer
