"""The acquirer's desk and the clearing house's suspensions, without I/O: a stand-in for a
suspended issuer's card is refused (ISSUER_NOT_ACCEPTED) and nothing is recorded; lifted by
the next poll, the same tap is approved and recorded (a fake pool: no database)."""

import asyncio
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from citycard.config.issuers import registry_from_dict
from citycard.domain.results import Result
from citycard.domain.standin import TapKey
from citycard.interop import store
from citycard.interop.desk import LinkMetrics, RemoteDesk

KEYS = {c: Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i, c in enumerate(("AA", "BB", "CC"))}
FLOOR_FEN = 2000


class FakePool:
    def __init__(self) -> None:
        self.executed: list[tuple[Any, ...]] = []

    async def execute(self, *args: Any) -> None:
        self.executed.append(args)


def _desk(pool: FakePool) -> RemoteDesk:
    issuers = [{"code": c, "name": c, "card_prefix": 900101 + i, "link": f"127.0.0.1:{40001 + i}",
                "link_public_key_hex": k.public_key().public_bytes_raw().hex(), "floor_limit_fen": FLOOR_FEN}
               for i, (c, k) in enumerate(KEYS.items())]
    reg = registry_from_dict({"own": "AA", "issuers": issuers})
    return RemoteDesk(reg, KEYS["AA"], pool, LinkMetrics(CollectorRegistry()), price=lambda _t, _p: 0,
                      hotlisted=lambda _c: False, tap_timeout_ms=100, connect_timeout_ms=100, max_inflight=8,
                      standin_window_ms=86_400_000, backoff_min_ms=10, backoff_max_ms=100,
                      wall_ms=lambda: 1_000_000)


def _tap(seq: int) -> store.LinkTap:
    return store.LinkTap("BB", 7, seq, 900102 * 10**11 + 5, 1, 1, 1_000_000, 200, 0)


def test_a_suspended_issuer_gets_no_stand_in_until_lifted() -> None:
    async def run() -> None:
        pool = FakePool()
        desk = _desk(pool)
        assert desk.set_suspended(["BB", "ZZ"]) == frozenset({"BB"})  # ZZ: no cards of it here
        refused = await desk._stand_in(_tap(1), TapKey("AA", 7, 1))
        assert refused.result == int(Result.ISSUER_NOT_ACCEPTED) and not pool.executed
        assert desk.standin.risk("BB").pending_fen == 0
        # another issuer is not touched by BB's suspension
        other = store.LinkTap("CC", 7, 2, 900103 * 10**11 + 5, 1, 1, 1_000_000, 300, 0)
        assert (await desk._stand_in(other, TapKey("AA", 7, 2))).result == int(Result.OK)
        assert len(pool.executed) == 1
        # the next poll lifts it: the same tap is stood in and recorded
        assert desk.set_suspended([]) == frozenset()
        approved = await desk._stand_in(_tap(1), TapKey("AA", 7, 1))
        assert approved.result == int(Result.OK) and approved.fare_fen == 200
        assert len(pool.executed) == 2 and desk.standin.risk("BB").pending_fen == 200

    asyncio.run(run())
