"""A ShardStore for unit tests of AccountShardCore: its load waits for the test, and nothing
is ever committed."""

import asyncio

from citycard.domain.ledger import Ledger
from citycard.domain.recovery import Rebuild, RecoveryReport
from citycard.persistence.journal import Append


class GatedStore:
    """A ShardStore whose load finishes when the test says so; it commits nothing."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def open(self) -> None:
        pass

    async def load(self, ledger: Ledger) -> RecoveryReport:
        await self.release.wait()
        return Rebuild(ledger, 0, 0).report()

    def append(self) -> Append:
        async def append(records: list[tuple[object, ...]]) -> None:
            raise AssertionError("nothing is committed in this test")
        return append

    async def write_snapshot(self, lsn: int, rows: list[tuple[int, int, bytes]], total_fen: int) -> None:
        pass

    async def compact_states(self) -> int:
        return 0

    async def find_ops(self, keys: list[str]) -> list[object]:
        return []

    async def fetch_cards(self, card_nos: list[int]) -> list[object]:
        return []

    async def close(self) -> None:
        pass
