"""End to end: offline uploads from a terminal on a real socket, through the gateway's offline
desk, into Postgres (and the hotlist in Redis), and loads onto the purse over HTTP."""

import asyncio

import pytest

from citycard.protocols.codes import ErrorCode, OfflineCode
from citycard.terminal.client import ServerError
from tests.support.city import api_city, plain_cards, running_city
from tests.support.offline import LoadCard, Sam

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


def test_a_load_at_the_counter_retries_safely_and_raises_the_shadow(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            h = api.auth()
            card = await api.new_card(901)
            assert (await api.top_up(card, 5000, "fund-1", purse="general")).status_code == 200
            chip = LoadCard(api.city.settings, card)
            tid, r1, r2 = 4001, bytes.fromhex("01020304"), bytes.fromhex("0a0b0c0d")
            body = {"amount_fen": 1000, "source": "account", "idempotency_key": "load-1", "terminal_id": tid}
            url = f"/cards/{card}/purse/load"

            bad = await api.http.post(url, headers=h, json={**body, **chip.init(999, tid, 0, 0, r1)})
            assert bad.status_code == 422 and bad.json()["field"] == "mac1"
            first = await api.http.post(url, headers=h, json={**body, **chip.init(1000, tid, 0, 0, r1)})
            assert first.status_code == 200, first.text
            out = first.json()
            assert (out["state"], out["replay"], out["shadow_balance_fen"]) == ("pending", False, 1000)
            assert chip.mac2_ok(out, 1000, tid, 0, 0, r1)
            # the credit never reached the card: same key, same online counter, the card's new random
            again = (await api.http.post(url, headers=h, json={**body, **chip.init(1000, tid, 0, 0, r2)})).json()
            assert again["replay"] is True and chip.mac2_ok(again, 1000, tid, 0, 0, r2)
            balance = (await api.http.get(f"/cards/{card}/balance", headers=h)).json()
            assert balance["purses"]["general"] == 4000  # moved once
            # another key at the same online counter would load twice: refused
            other = await api.http.post(url, headers=h, json={**body, "idempotency_key": "load-2",
                                                              **chip.init(1000, tid, 0, 0, r2)})
            assert other.status_code == 409 and other.json()["result"] == "LOAD_PENDING"

            real = chip.load_tac(again, 1000, tid, 0, 0)  # the card credited with the latest MAC2
            if real is not None:  # the host checks it: a wrong one confirms nothing
                wrong = await api.http.post(f"{url}/load-1/confirm", headers=h, json={"tac": "00000000"})
                assert wrong.status_code == 422 and wrong.json()["field"] == "tac"
            tac = (real or bytes.fromhex("a1b2c3d4")).hex()
            confirmed = await api.http.post(f"{url}/load-1/confirm", headers=h, json={"tac": tac})
            assert confirmed.status_code == 200, confirmed.text
            assert confirmed.json()["replay"] is False
            assert confirmed.json()["tac_verified"] is (real is not None)
            assert (await api.http.post(f"{url}/load-1/confirm", headers=h, json={"tac": tac})).json()["replay"]
            # the card's online counter moved past: already loaded, no money
            done = await api.http.post(url, headers=h, json={**body, **chip.init(1000, tid, 1000, 1, r1)})
            assert done.status_code == 409 and done.json()["result"] == "ALREADY_LOADED"
            cash = await api.http.post(url, headers=h, json={
                **body, "source": "cash", "idempotency_key": "cash-1", **chip.init(500, tid, 1000, 1, r1),
                "amount_fen": 500})
            assert cash.status_code == 200 and cash.json()["shadow_balance_fen"] == 1500

            # an offline purchase spends from the shadow; the history shows both ledgers
            client = await api.city.client()
            try:
                sam = Sam(api.city.settings, client.terminal_id)
                rec = [sam.record(card, 0, 300, 1200)]
                assert (await client.upload(1, rec, sam.mac(1, rec))).codes == [A]
            finally:
                await client.close()
            page = (await api.http.get(f"/cards/{card}/transactions", headers=h)).json()
            assert page["shadow_balance_fen"] == 1200
            assert {i["ledger"] for i in page["items"]} == {"account"}
            assert [(p["ledger"], p["kind"], p["amount_fen"]) for p in page["card_purse"]] == [
                ("card_purse", "offline_purchase", 300), ("card_purse", "load", 500), ("card_purse", "load", 1000)]
            view = (await api.http.get(f"/cards/{card}", headers=h)).json()
            assert view["shadow_balance_fen"] == 1200
            conn = await api.city.conn()
            try:
                actions = [r[0] for r in await conn.fetch(
                    "SELECT action FROM audit_log WHERE subject = $1 AND action LIKE 'purse.%' ORDER BY audit_id",
                    f"card:{card}")]
            finally:
                await conn.close()
            assert actions == ["purse.load", "purse.load_confirm", "purse.load"]

    asyncio.run(scenario())
