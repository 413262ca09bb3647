"""End to end: offline uploads from a terminal on a real socket, through the gateway's offline
desk, into Postgres (and the hotlist in Redis), and loads onto the purse over HTTP."""

import asyncio

import pytest

from citycard.protocols.codes import ErrorCode, OfflineCode
from citycard.terminal.client import ServerError
from tests.support.city import plain_cards, running_city
from tests.support.offline import Sam

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(180)]
A, D = OfflineCode.ACCEPTED, OfflineCode.DUPLICATE


async def _count(conn, sql: str, *args: object) -> int:  # noqa: ANN001
    return int(await conn.fetchval(sql, *args))


def test_uploads_are_durable_once_and_fraud_hotlists_the_card(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema) as city:
            client = await city.client()
            sam = Sam(city.settings, client.terminal_id)
            good, forger, cloned = plain_cards(city)[:3]
            conn = await city.conn()
            try:
                # the purse was loaded with 1000 fen through the host (what loads do to the shadow)
                await conn.executemany("INSERT INTO offline_cards (card_no, loaded_fen) VALUES ($1, 1000)",
                                       [(good,), (forger,), (cloned,)])
                records = [sam.record(good, 0, 200, 800), sam.record(good, 1, 200, 600)]
                ack = await client.upload(1, records, sam.mac(1, records))
                assert (ack.batch_seq, ack.codes) == (1, [A, A])
                assert await _count(conn, "SELECT count(*) FROM offline_records WHERE card_no = $1", good) == 2
                assert await conn.fetchval("SELECT spent_fen FROM offline_cards WHERE card_no = $1", good) == 400

                # the ack was lost: the same batch again answers the same, journals nothing
                again = await client.upload(1, records, sam.mac(1, records))
                assert again.codes == [A, A]
                # the same records in a new batch are duplicates
                dup = await client.upload(2, records, sam.mac(2, records))
                assert dup.codes == [D, D]
                assert await _count(conn, "SELECT count(*) FROM offline_records") == 2
                assert await conn.fetchval("SELECT spent_fen FROM offline_cards WHERE card_no = $1", good) == 400

                # a bad batch MAC refuses the whole batch; nothing of it journaled
                late = [sam.record(good, 3, 100, 500)]
                with pytest.raises(ServerError) as err:
                    await client.upload(3, late, bytes(32))
                assert err.value.error.code == ErrorCode.BAD_BATCH_MAC
                # other records under a used batch_seq are refused whole
                with pytest.raises(ServerError) as err:
                    await client.upload(2, late, sam.mac(2, late))
                assert err.value.error.code == ErrorCode.BATCH_SEQ_REUSED
                assert await _count(conn, "SELECT count(*) FROM offline_records WHERE offline_counter = 3") == 0

                # a forged TAC and a reused counter: refused, the cards hotlisted with reasons
                mixed = [sam.record(good, 3, 100, 500), sam.record(forger, 0, 100, 900, forged=True),
                         sam.record(cloned, 0, 100, 900), sam.record(cloned, 0, 50, 950, seq=77)]
                out = await client.upload(4, mixed, sam.mac(4, mixed))
                assert out.codes == [A, OfflineCode.BAD_TAC, A, OfflineCode.COUNTER_REUSED]
                gap = await conn.fetchrow("SELECT counter_from, counter_to FROM offline_gaps WHERE card_no = $1", good)
                assert tuple(gap) == (2, 2)
                reasons = dict(await conn.fetch("SELECT card_no, reason FROM hotlist WHERE card_no = ANY($1::bigint[])",
                                                [good, forger, cloned]))
                assert set(reasons) == {forger, cloned}
                assert "forged TAC" in reasons[forger] and "counter used twice" in reasons[cloned]
                audits = await conn.fetch("SELECT subject, after->>'code' AS code, reason FROM audit_log"
                                          " WHERE action = 'card.hotlist.offline' ORDER BY subject")
                assert {(a["subject"], a["code"]) for a in audits} == {
                    (f"card:{forger}", "BAD_TAC"), (f"card:{cloned}", "COUNTER_REUSED")}
                assert await _count(conn, "SELECT count(*) FROM offline_rejects") == 2
                for card in (forger, cloned):  # every gateway learns of it through Redis
                    for _ in range(100):
                        if card in city.platform.hotlist.cards:
                            break
                        await asyncio.sleep(0.02)
                    assert card in city.platform.hotlist.cards
                metrics = city.platform.metrics.registry
                assert metrics.get_sample_value("citycard_offline_records_total", {"code": "BAD_TAC"}) == 1
                assert metrics.get_sample_value("citycard_offline_batches_total", {"outcome": "replayed"}) == 1
            finally:
                await conn.close()
                await client.close()

    asyncio.run(scenario())
