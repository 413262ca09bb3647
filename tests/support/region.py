"""Two real platforms in one process, each the other's peer on the inter-platform link
(docs/interop.md): city A ("HZ") issues the seeded cards, city B ("SH") has terminals that
take them. Each runs in its own schema of the same Postgres."""

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.city import City, running_city
from tests.support.services import ServiceUrls

A_SEED = bytes(range(32))
B_SEED = bytes(range(32, 64))
A_PREFIX = 330100  # the seeded cards' issuer (plan_cards)
B_PREFIX = 310000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pub_hex(seed: bytes) -> str:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw().hex()


@dataclass
class Region:
    a: City  # the issuer
    b: City  # the acquirer
    floor_limit_fen: int


@asynccontextmanager
async def running_region(urls: ServiceUrls, schema_a: str, schema_b: str, key_dir: Path, *,
                         floor_limit_fen: int = 500, **b_region: object) -> AsyncIterator[Region]:
    port_a, port_b = free_port(), free_port()
    issuers = [
        {"code": "HZ", "name": "Hangzhou", "card_prefix": A_PREFIX, "link": f"127.0.0.1:{port_a}",
         "link_public_key_hex": _pub_hex(A_SEED), "floor_limit_fen": floor_limit_fen},
        {"code": "SH", "name": "Shanghai", "card_prefix": B_PREFIX, "link": f"127.0.0.1:{port_b}",
         "link_public_key_hex": _pub_hex(B_SEED), "floor_limit_fen": floor_limit_fen},
    ]
    (key_dir / "a.key").write_text(A_SEED.hex())
    (key_dir / "b.key").write_text(B_SEED.hex())
    common = {"issuers": issuers, "link_host": "127.0.0.1", "backoff_min_ms": 100, "backoff_max_ms": 400,
              "connect_timeout_ms": 300}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_city(urls, schema_a, region={
            **common, "own": "HZ", "link_port": port_a, "link_key_path": str(key_dir / "a.key")}))
        b = await stack.enter_async_context(running_city(urls, schema_b, region={
            **common, "own": "SH", "link_port": port_b, "link_key_path": str(key_dir / "b.key"), **b_region}))
        yield Region(a, b, floor_limit_fen)
