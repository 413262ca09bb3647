"""Registered merchants on real Postgres (persistence/merchants.py) and in a shard: the rules a
shard loads at start include them, and terms pushed to a running shard apply at once."""

import asyncio
import time

import msgspec

from citycard.actors.account_shard import AccountShardCore
from citycard.cli.services import migrate_db
from citycard.domain.cards import App
from citycard.domain.merchant_book import MerchantTerms
from citycard.domain.taps import Outcome, Tap, TapKind
from citycard.loadtest.city import CARD_SEED_COLUMNS, plan_cards
from citycard.persistence import merchants as store
from citycard.persistence.db import connect
from citycard.persistence.merchants import MerchantCode, NewMerchant
from tests.support.services import ServiceUrls, make_settings

_enc = msgspec.msgpack.Encoder()
_outcomes = msgspec.msgpack.Decoder(list[Outcome])
COL = {name: i for i, name in enumerate(CARD_SEED_COLUMNS)}
SHOP = 7002
MEMBER_APPS = int(App.EPURSE | App.ONLINE | App.MERCHANT_MEMBER)


async def _pay(core: AccountShardCore, seq: int, card: int, t: int, amount: int) -> int:
    packed, _ = await core.apply(_enc.encode([Tap(880100, seq, card, t, int(TapKind.MERCHANT), route=SHOP,
                                                  amount_fen=amount)]))
    out = _outcomes.decode(packed)[0]
    assert out.result == 0, out
    return out.fare_fen


def test_register_change_and_the_shards_rules(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        settings = make_settings(services, schema)
        await migrate_db(settings, services.db_url)
        row = list(next(c for c in plan_cards(200, 2, seed=5) if c[1] == 0))
        row[COL["apps"]], row[COL["opening_fen"]], row[COL["opening_voucher_fen"]] = MEMBER_APPS, 100_000, 0
        card = row[0]
        conn = await connect(services.db_url, schema)
        try:
            await conn.copy_records_to_table("cards", records=[tuple(row)], columns=CARD_SEED_COLUMNS)
            running = AccountShardCore(0, settings.as_dict(), services.db_url)
            await running.ensure_loaded()  # loaded before the merchant exists
            now = int(time.time() * 1000)
            assert await _pay(running, 1, card, now, 1000) == 1000  # not a merchant the rules know yet

            m = NewMerchant(SHOP, "Tea house", "dining", 15, 300)
            assert (await store.register(conn, m, now, "alice", "merchant_desk")).code == MerchantCode.OK
            assert (await store.register(conn, m, now + 5, "alice", "merchant_desk")).code == MerchantCode.ALREADY
            other = await store.register(conn, NewMerchant(SHOP, "Tea house", "retail", 15, 300), now, "a", "r")
            assert other.code == MerchantCode.CONFLICT and "category" in other.detail, other
            assert (await store.add_terminals(conn, SHOP, [880100], "alice", "r")).code == MerchantCode.OK
            assert (await store.add_terminals(conn, SHOP, [880100], "alice", "r")).code == MerchantCode.ALREADY
            taken = await store.add_terminals(conn, SHOP + 1, [880100], "alice", "r")
            assert taken.code == MerchantCode.UNKNOWN, taken
            assert await conn.fetchval("SELECT (kind, route) = ($2::smallint, $3) FROM terminals WHERE terminal_id = $1",
                                       880100, int(TapKind.MERCHANT), SHOP)
            change = now + 60_000
            assert (await store.set_discount(conn, SHOP, 5, now - 1, now, "a", "r")).code == MerchantCode.RETROACTIVE
            assert (await store.set_discount(conn, SHOP, 5, change, now, "a", "r")).code == MerchantCode.OK
            assert (await store.set_discount(conn, SHOP, 5, change, now, "a", "r")).code == MerchantCode.ALREADY
            assert (await store.set_discount(conn, SHOP, 6, change, now, "a", "r")).code == MerchantCode.CONFLICT
            terms = await store.terms(conn)
            assert terms == [MerchantTerms(SHOP, now, "Tea house", "dining", 15),
                             MerchantTerms(SHOP, change, "Tea house", "dining", 5)]
            actions = [r[0] for r in await conn.fetch(
                "SELECT action FROM audit_log WHERE subject = $1 ORDER BY audit_id", f"merchant:{SHOP}")]
            assert actions == ["merchant.register", "merchant.terminals", "merchant.discount"], actions

            # a shard that starts now reads them; the running one takes them pushed
            fresh = AccountShardCore(0, settings.as_dict(), services.db_url)
            await running.merge_merchants(_enc.encode(terms))
            await running.writer.close()  # type: ignore[union-attr]  # one writer per shard at a time
            assert [await _pay(fresh, 2, card, now + 1, 1000), await _pay(fresh, 3, card, change, 1000)] == [850, 950]
            assert await running.merge_merchants(_enc.encode(terms)) == 0  # pushed again: nothing new
            assert [running.tables.at(now).registered[SHOP][0]] == [[now, change]]  # type: ignore[union-attr]
            await fresh.writer.close()  # type: ignore[union-attr]
        finally:
            await conn.close()

    asyncio.run(run())
