"""Card-service ops through a real AccountShard core on Postgres: durable, once per key, and
rebuilt after a restart (snapshot + journal), with old keys found in the journal."""

import asyncio
import time

import msgspec
import pytest

from citycard.actors.account_shard import AccountShardCore
from citycard.cli.services import migrate_db
from citycard.domain.cards import CardStatus
from citycard.domain.ops import (
    Cancel,
    CardOp,
    Credit,
    OpOutcome,
    SetProduct,
    SetStatus,
    TopUp,
    TransferIn,
    TransferOut,
)
from citycard.domain.purses import Purse
from citycard.domain.results import Result
from citycard.domain.shard import shard_of
from citycard.domain.taps import Tap, TapKind
from citycard.domain.views import CardView
from citycard.loadtest.city import CARD_SEED_COLUMNS, plan_cards
from citycard.persistence.db import connect
from tests.support.services import ServiceUrls, make_settings

_enc = msgspec.msgpack.Encoder()
_outcomes = msgspec.msgpack.Decoder(list[OpOutcome])
_views = msgspec.msgpack.Decoder(list[CardView | None])


async def _ops(core: AccountShardCore, ops: list[CardOp]) -> list[OpOutcome]:
    return _outcomes.decode(await core.apply_ops(_enc.encode(ops)))


def test_ops_survive_a_restart_and_old_keys_are_not_applied_again(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        settings = make_settings(services, schema)
        await migrate_db(settings, services.db_url)
        cards = [c for c in plan_cards(200, 2, seed=5) if c[1] == 0][:4]  # shard 0's cards
        conn = await connect(services.db_url, schema)
        try:
            await conn.copy_records_to_table("cards", records=cards, columns=CARD_SEED_COLUMNS)
        finally:
            await conn.close()
        a, b, c, d = (row[0] for row in cards)
        assert all(shard_of(x, 2) == 0 for x in (a, b, c, d))
        core = AccountShardCore(0, settings.as_dict(), services.db_url)
        now = int(time.time() * 1000)
        first = await _ops(core, [TopUp("t1", a, Purse.EPURSE, 1000), Credit("c1", b, Purse.ALLOWANCE, 300)])
        assert [o.result for o in first] == [Result.OK, Result.OK]
        await core.apply(_enc.encode([Tap(9, 1, a, now, TapKind.BUS, route=12)]))
        await core.snapshot()  # t1 and c1 are now only in the snapshot's past
        await _ops(core, [SetProduct("p1", c, "park_pass", 0, now * 2), SetStatus("s1", d, CardStatus.BLOCKED)])
        out = (await _ops(core, [TransferOut("r:out", a, c)]))[0]
        assert out.result == Result.OK and out.moved is not None
        await _ops(core, [TransferIn("r:in", c, a, out.moved)])
        views = await core.card_views([a, b, c, d])
        total = (await core.stats())["balance_fen"]

        restarted = AccountShardCore(0, settings.as_dict(), services.db_url)
        assert await restarted.card_views([a, b, c, d]) == views
        assert (await restarted.stats())["balance_fen"] == total
        # keys from before the snapshot are not in memory: found in the journal, answered again
        again = await _ops(restarted, [TopUp("t1", a, Purse.EPURSE, 1000), Credit("c1", b, Purse.ALLOWANCE, 300),
                                       TransferOut("r:out", a, c), TransferIn("r:in", c, a, out.moved)])
        assert [o.replay for o in again] == [True] * 4
        assert again[2].moved == out.moved
        assert await restarted.card_views([a, b, c, d]) == views
        cancel = (await _ops(restarted, [Cancel("x", a)]))[0]
        assert cancel.result == Result.CARD_CANCELLED  # a was replaced: cancelled for good
        conn = await connect(services.db_url, schema)
        try:
            n = await conn.fetchval("SELECT count(*) FROM journal WHERE op_key IS NOT NULL AND result = 0")
            dup = await conn.fetchval("SELECT count(*) - count(DISTINCT op_key) FROM journal WHERE op_key IS NOT NULL")
        finally:
            await conn.close()
        assert (n, dup) == (6, 0)
        for core_ in (core, restarted):
            if core_.writer is not None:
                await core_.writer.close()

    asyncio.run(run())


@pytest.mark.parametrize("n_concurrent", [8])
def test_the_same_key_sent_concurrently_credits_once(configured_services: ServiceUrls, schema: str,
                                                     n_concurrent: int) -> None:
    async def run() -> None:
        settings = make_settings(configured_services, schema)
        await migrate_db(settings, configured_services.db_url)
        card = next(c for c in plan_cards(50, 2, seed=9) if c[1] == 0)
        conn = await connect(configured_services.db_url, schema)
        try:
            await conn.copy_records_to_table("cards", records=[card], columns=CARD_SEED_COLUMNS)
        finally:
            await conn.close()
        core = AccountShardCore(0, settings.as_dict(), configured_services.db_url)
        before = _views.decode(await core.card_views([card[0]]))[0].purses["general"]
        outs = await asyncio.gather(*[_ops(core, [Credit("welfare:2026-11:1", card[0], Purse.GENERAL, 500)])
                                      for _ in range(n_concurrent)])
        assert sorted(o[0].replay for o in outs) == [False] + [True] * (n_concurrent - 1)
        assert _views.decode(await core.card_views([card[0]]))[0].purses["general"] == before + 500
        if core.writer is not None:
            await core.writer.close()

    asyncio.run(run())


def test_snapshots_compact_the_stored_states_and_a_restart_reads_the_newest(services: ServiceUrls,
                                                                            schema: str) -> None:
    """Every snapshot appends the cards it changed; the shard compacts its log at twice its cards,
    so the log stays bounded, and a restart rebuilds the same cards from what is left."""
    async def run() -> None:
        settings = make_settings(services, schema)
        await migrate_db(settings, services.db_url)
        cards = [c for c in plan_cards(200, 2, seed=5) if c[1] == 0][:4]
        card_nos = [row[0] for row in cards]
        conn = await connect(services.db_url, schema)
        try:
            await conn.copy_records_to_table("cards", records=cards, columns=CARD_SEED_COLUMNS)
            core = AccountShardCore(0, settings.as_dict(), services.db_url)
            core.compact_min_state_rows = 1  # compact at twice the shard's 4 cards
            log_rows = []
            for k in range(6):
                outs = await _ops(core, [TopUp(f"t{k}:{c}", c, Purse.EPURSE, 100 + k) for c in card_nos])
                assert {o.result for o in outs} == {Result.OK}
                await core.snapshot()
                log_rows.append(await conn.fetchval("SELECT count(*) FROM card_state_log WHERE shard_id = 0"))
            # 24 states appended in all; compaction keeps the log within twice the cards
            assert max(log_rows) < 2 * len(card_nos) and min(log_rows) == len(card_nos)
            assert await conn.fetchval("SELECT count(DISTINCT card_no) FROM card_states WHERE shard_id = 0") == 4
            views = await core.card_views(card_nos)
            restarted = AccountShardCore(0, settings.as_dict(), services.db_url)
            assert await restarted.card_views(card_nos) == views
            assert restarted.recovery is not None and restarted.recovery.states == log_rows[-1]
            assert restarted.recovery.rows_replayed == 0  # every state is as of the last snapshot
            for core_ in (core, restarted):
                if core_.writer is not None:
                    await core_.writer.close()
        finally:
            await conn.close()

    asyncio.run(run())
