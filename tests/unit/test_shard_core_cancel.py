"""AccountShardCore keeps a cancellation (F8, found by the seeded simulation): on Python 3.11
``asyncio.wait_for`` dropped one that landed as the shard's load finished, and the call ran on."""

import asyncio

from citycard.actors.account_shard import AccountShardCore
from citycard.config.fare_table import shipped_tables
from citycard.config.settings import load_settings
from citycard.errors import StoreError
from tests.support.shard_store import GatedStore


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


def test_the_platform_start_waits_for_a_long_load_where_a_tap_would_not() -> None:
    """A city of millions of cards loads for minutes: the start passes the load timeout, a
    call on the tap path keeps its short wait (READY_TIMEOUT_S) and gets StoreError."""
    async def run() -> tuple[str, bool]:
        store = GatedStore()
        core = AccountShardCore(0, load_settings(env={}).as_dict(), store=store,  # type: ignore[arg-type]
                                tables=shipped_tables())
        try:
            await core.ensure_loaded(0.05)
            short = "loaded"
        except StoreError as exc:
            short = str(exc)
        start = asyncio.get_running_loop().create_task(core.ensure_loaded(30.0))
        await asyncio.sleep(0.2)  # longer than the short wait: the start still waits
        waiting = not start.done()
        store.release.set()
        await start
        return short, waiting

    short, waiting = asyncio.run(run())
    assert short == "shard 0 not ready after 0.05 s"
    assert waiting
