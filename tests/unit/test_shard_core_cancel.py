"""AccountShardCore keeps a cancellation (F8, found by the seeded simulation): on Python 3.11
``asyncio.wait_for`` dropped one that landed as the shard's load finished, and the call ran on."""

import asyncio

from citycard.actors.account_shard import AccountShardCore
from citycard.config.fare_table import shipped_tables
from citycard.config.settings import load_settings
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

    async def find_ops(self, keys: list[str]) -> list[object]:
        return []

    async def fetch_cards(self, card_nos: list[int]) -> list[object]:
        return []

    async def close(self) -> None:
        pass


def test_a_call_cancelled_as_the_load_finishes_is_cancelled() -> None:
    async def run() -> bool:
        store = GatedStore()
        core = AccountShardCore(0, load_settings(env={}).as_dict(), store=store,  # type: ignore[arg-type]
                                tables=shipped_tables())
        call = asyncio.get_running_loop().create_task(core.ensure_loaded())
        await asyncio.sleep(0.01)
        store.release.set()  # the load finishes in this turn ...
        await asyncio.sleep(0)
        call.cancel()  # ... and the call is cancelled in the same one
        try:
            await call
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(run()), "the cancelled call ran on"
