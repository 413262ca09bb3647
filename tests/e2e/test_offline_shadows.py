"""End to end: the offline desk's shadows kept in memory against the database: a card it lacks
is read from the journal, a load made through the API between two uploads is seen, a record
journaled by another writer is found by the primary key, and a desk restarted after a crash
(its cache lost, its offline_cards rows not yet written back) keeps exactly once and the shadow."""

import asyncio

import pytest

from citycard.domain.offline_book import ShadowCache
from citycard.persistence import offline as store
from citycard.protocols.codes import ErrorCode, OfflineCode
from citycard.tasks import cancel_and_wait
from citycard.terminal.client import ServerError
from tests.support.city import api_city, plain_cards, running_city
from tests.support.offline import LoadCard, Sam

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(180)]
A, D = OfflineCode.ACCEPTED, OfflineCode.DUPLICATE


async def _row(conn, card: int) -> tuple[int, int, int, int]:  # noqa: ANN001
    r = await conn.fetchrow("SELECT loaded_fen, spent_fen, last_counter, missing FROM offline_cards WHERE card_no = $1",
                            card)
    return r["loaded_fen"], r["spent_fen"], r["last_counter"], r["missing"]


def test_a_restarted_desk_reads_the_journal_and_keeps_exactly_once(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            desk = city.platform.offline
            assert desk is not None
            client = await city.client()
            sam = Sam(city.settings, client.terminal_id)
            card = plain_cards(city)[0]
            conn = await city.conn()
            try:
                await conn.execute("INSERT INTO offline_cards (card_no, loaded_fen) VALUES ($1, 1000)", card)
                first = [sam.record(card, 0, 200, 800), sam.record(card, 1, 200, 600), sam.record(card, 3, 100, 500)]
                assert (await client.upload(1, first, sam.mac(1, first))).codes == [A, A, A]
                kept = desk.shadows.get(card)
                assert kept is not None and (kept.spent_fen, kept.last_counter, kept.missing) == (500, 3, 1)
                # what the journal makes is what the desk kept (a cold card's shadow matches)
                assert (await store.cold_shadows(conn, [card]))[card] == kept
                assert await _row(conn, card) == (1000, 500, 3, 1)  # written back: the desk went idle

                # A crash: the writer gone, the cache lost, the rows' desk columns not written back.
                await cancel_and_wait(desk._tasks)
                desk._tasks = []
                await conn.execute("UPDATE offline_cards SET spent_fen = 0, last_counter = -1, seen = '', missing = 0"
                                   " WHERE card_no = $1", card)
                desk.shadows = ShadowCache(1000)
                desk.start()

                assert (await client.upload(1, first, sam.mac(1, first))).codes == [A, A, A]  # the same answer
                assert (await client.upload(2, first, sam.mac(2, first))).codes == [D, D, D]
                # 500 left by the journal (the stale row would say 1000): 600 more is impossible
                late = [sam.record(card, 2, 50, 700), sam.record(card, 4, 600, 0)]
                assert (await client.upload(3, late, sam.mac(3, late))).codes == [A, OfflineCode.BALANCE_IMPOSSIBLE]
                assert int(await conn.fetchval("SELECT count(*) FROM offline_records WHERE card_no = $1", card)) == 5
                assert await _row(conn, card) == (1000, 1150, 4, 0)  # the row caught up
                assert (await store.shadow(conn, card)).balance_fen == -150  # type: ignore[union-attr]
                assert await conn.fetchval("SELECT 1 FROM hotlist WHERE card_no = $1", card)

                # A row not written back yet (under load) is written when the desk stops.
                await conn.execute("UPDATE offline_cards SET spent_fen = 0, last_counter = -1 WHERE card_no = $1",
                                   card)
                desk.shadows.install([desk.shadows.get(card)])  # type: ignore[list-item]
                await desk.stop()
                assert await _row(conn, card) == (1000, 1150, 4, 0)
                desk.start()
            finally:
                await conn.close()
                await client.close()

    asyncio.run(scenario())


def test_a_record_another_writer_journaled_is_found_by_the_primary_key(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            desk = city.platform.offline
            assert desk is not None
            client = await city.client()
            sam = Sam(city.settings, client.terminal_id)
            card = plain_cards(city)[1]
            conn = await city.conn()
            try:
                await conn.execute("INSERT INTO offline_cards (card_no, loaded_fen) VALUES ($1, 1000)", card)
                one = [sam.record(card, 0, 100, 900)]
                assert (await client.upload(1, one, sam.mac(1, one))).codes == [A]
                # another gateway process journals counters 1 and 2 of the card: this desk's
                # shadow does not know of them
                theirs = [sam.record(card, 1, 100, 800, seq=501), sam.record(card, 2, 100, 700, seq=502)]
                await conn.copy_records_to_table("offline_records", records=[
                    store.record_row(r, int(A), 9000 + r.offline_counter) for r in theirs],
                    columns=store.RECORD_COLUMNS)
                mine = [theirs[0], sam.record(card, 2, 50, 750, seq=77), sam.record(card, 3, 100, 600)]
                out = await client.upload(2, mine, sam.mac(2, mine))
                assert out.codes == [D, OfflineCode.COUNTER_REUSED, A]
                rows = await conn.fetch("SELECT offline_counter, terminal_seq FROM offline_records WHERE card_no = $1"
                                        " ORDER BY 1", card)
                assert [tuple(r) for r in rows] == [(0, 1000), (1, 501), (2, 502), (3, 1003)]
                assert desk.shadows.get(card) == (await store.cold_shadows(conn, [card]))[card]
            finally:
                await conn.close()
                await client.close()

    asyncio.run(scenario())


def test_a_load_made_between_two_uploads_is_seen(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            h = api.auth()
            card = await api.new_card(902)
            chip, tid = LoadCard(api.city.settings, card), 4002
            url = f"/cards/{card}/purse/load"

            async def load(key: str, amount_fen: int, balance_fen: int, online_counter: int) -> dict:
                body = {"amount_fen": amount_fen, "source": "cash", "idempotency_key": key, "terminal_id": tid,
                        **chip.init(amount_fen, tid, balance_fen, online_counter, bytes.fromhex("01020304"))}
                r = await api.http.post(url, headers=h, json=body)
                assert r.status_code == 200, r.text
                return r.json()

            assert (await load("l1", 1000, 0, 0))["shadow_balance_fen"] == 1000
            client = await api.city.client()
            conn = await api.city.conn()
            try:
                sam = Sam(api.city.settings, client.terminal_id)
                r0 = [sam.record(card, 0, 800, 200)]
                assert (await client.upload(1, r0, sam.mac(1, r0))).codes == [A]
                assert api.city.platform.offline.shadows.get(card).balance_fen == 200  # type: ignore[union-attr]
                # the load goes through the API (its own transaction): the desk's copy says 200
                assert (await load("l2", 500, 200, 1))["shadow_balance_fen"] == 700
                r1 = [sam.record(card, 1, 600, 100)]
                assert (await client.upload(2, r1, sam.mac(2, r1))).codes == [A]  # read again, not impossible
                assert await _row(conn, card) == (1500, 1400, 1, 0)
                assert (await api.http.get(f"/cards/{card}", headers=h)).json()["shadow_balance_fen"] == 100
                assert not await conn.fetchval("SELECT 1 FROM hotlist WHERE card_no = $1", card)
            finally:
                await conn.close()
                await client.close()

    asyncio.run(scenario())


def test_overlapping_groups_decide_on_the_one_before_and_redo_after_its_failure(configured_services, schema,
                                                                               monkeypatch):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            desk = city.platform.offline
            assert desk is not None
            desk.max_commit = 3  # each batch of 3 records its own group
            decided_on_the_one_before: list[bool] = []
            prepare, write = desk._prepare, store.write
            calls = 0

            async def spy_prepare(g) -> None:  # noqa: ANN001
                decided_on_the_one_before.append(g.after is not None)
                await prepare(g)

            async def slow_write(conn, *rows) -> None:  # noqa: ANN001
                nonlocal calls
                calls += 1
                if calls == 2:  # the second group's writes fail: it is answered INTERNAL
                    raise ConnectionError("lost the database")
                await asyncio.sleep(0.05)  # a commit slow enough for the next group to overlap it
                await write(conn, *rows)

            monkeypatch.setattr(desk, "_prepare", spy_prepare)
            monkeypatch.setattr(store, "write", slow_write)
            client = await city.client()
            sam = Sam(city.settings, client.terminal_id)
            cards = plain_cards(city)[2:5]
            conn = await city.conn()
            try:
                await conn.executemany("INSERT INTO offline_cards (card_no, loaded_fen) VALUES ($1, 1000)",
                                       [(c,) for c in cards])
                batches = {b: [sam.record(c, b - 1, 10, 990 - 10 * b) for c in cards] for b in range(1, 7)}
                batches[7] = batches[4]  # the same batch again while it is in flight: the same answer

                async def send(b: int) -> object:
                    seq = 4 if b == 7 else b
                    try:
                        return (await client.upload(seq, batches[b], sam.mac(seq, batches[b]))).codes
                    except ServerError as exc:
                        return exc.error.code

                out = await asyncio.gather(*(send(b) for b in range(1, 8)))
                assert out[1] == ErrorCode.INTERNAL, out  # batch 2 failed: resend it
                assert all(codes == [A, A, A] for i, codes in enumerate(out) if i != 1), out
                assert any(decided_on_the_one_before)
                assert await send(2) == [A, A, A]  # counter 1 fills the gap the later batches left
                assert int(await conn.fetchval("SELECT count(*) FROM offline_records WHERE card_no = ANY($1)",
                                               cards)) == 18
                for c in cards:
                    kept = desk.shadows.get(c)
                    assert kept == (await store.cold_shadows(conn, [c]))[c]
                    assert (kept.spent_fen, kept.last_counter, kept.missing) == (60, 5, 0)  # type: ignore[union-attr]
                    assert await _row(conn, c) == (1000, 60, 5, 0)
            finally:
                await conn.close()
                await client.close()

    asyncio.run(scenario())


def test_a_platform_restarted_between_uploads_keeps_exactly_once_and_the_shadow(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            card = plain_cards(city)[5]
            conn = await city.conn()
            try:
                await conn.execute("INSERT INTO offline_cards (card_no, loaded_fen) VALUES ($1, 1000)", card)
                client = await city.client()
                sam = Sam(city.settings, client.terminal_id)
                first = [sam.record(card, 0, 300, 700), sam.record(card, 1, 300, 400)]
                assert (await client.upload(1, first, sam.mac(1, first))).codes == [A, A]
                await client.close()

                await city.platform.stop()
                await city.platform.start(gateway_port=0, metrics_port=0, api_port=-1)

                client = await city.client()
                try:
                    assert (await client.upload(1, first, sam.mac(1, first))).codes == [A, A]  # replayed
                    assert (await client.upload(2, first, sam.mac(2, first))).codes == [D, D]
                    over = [sam.record(card, 2, 500, 0)]  # 400 left: impossible
                    assert (await client.upload(3, over, sam.mac(3, over))).codes == [OfflineCode.BALANCE_IMPOSSIBLE]
                finally:
                    await client.close()
                assert int(await conn.fetchval("SELECT count(*) FROM offline_records WHERE card_no = $1", card)) == 3
                assert await _row(conn, card) == (1000, 1100, 2, 0)
            finally:
                await conn.close()

    asyncio.run(scenario())
