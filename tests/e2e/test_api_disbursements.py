"""Disbursement programmes end to end through HTTP, on real Postgres, Redis and Ray: uploads
with bad lines named, runs, reports, and the promise: at most one credit per (programme,
period, holder), however often a run is repeated, stopped, resumed or its platform restarted."""

import asyncio
import time
from datetime import date, datetime, timedelta

import httpx
import pytest
import ray

from citycard.cli.runtime import Platform
from citycard.domain.cards import make_card_no
from citycard.domain.ops import OpKind
from citycard.domain.results import Result
from citycard.domain.shard import shard_of
from citycard.domain.taps import TapKind
from tests.support.city import ApiCity, api_city, cid, programme

pytestmark = pytest.mark.usefixtures("ray_cluster")
PERIOD = "2026-11"
FUTURE = "2099-01-01T00:00:00+08:00"
FUTURE_MS = int(datetime.fromisoformat(FUTURE).timestamp() * 1000)


async def upload_csv(api: ApiCity, pid: int, text: str) -> httpx.Response:
    return await api.http.post(f"/programmes/{pid}/beneficiaries", content=text.encode(),
                               headers={**api.auth("programme_admin"), "Content-Type": "text/csv"})


async def start(api: ApiCity, pid: int, period: str = PERIOD) -> dict:
    r = await api.http.post(f"/programmes/{pid}/runs", headers=api.auth("programme_admin"), json={"period": period})
    assert r.status_code == 202, r.text
    return r.json()


async def wait_run(api: ApiCity, run_id: int, until: tuple[str, ...] = ("done", "failed"),
                   timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await api.http.get(f"/runs/{run_id}", headers=api.auth("read_only"))
        assert r.status_code == 200, r.text
        run = r.json()
        if run["state"] in until:
            return run
        assert time.monotonic() < deadline, run
        await asyncio.sleep(0.05)


async def credit_rows(api: ApiCity, pid: int, period: str = PERIOD) -> dict[int, int]:
    """card_no -> journal rows of kind CREDIT with this programme and period's keys."""
    conn = await api.city.conn()
    try:
        rows = await conn.fetch("SELECT card_no, count(*) AS n FROM journal WHERE kind = $1 AND op_key LIKE $2"
                                " GROUP BY card_no", int(OpKind.CREDIT), f"disb:{pid}:{period}:%")
    finally:
        await conn.close()
    return {r["card_no"]: r["n"] for r in rows}


async def seed_holders(api: ApiCity, n: int, first: int = 0) -> list[tuple[int, str, int]]:
    """n holders with one card each, written straight to the tables (setup, not money) and
    handed to their shards; (holder_id, citizen_id, card_no) each."""
    conn = await api.city.conn()
    born0 = date(1950, 1, 1)
    people = [(cid(i % 1000, born0 + timedelta(days=i // 1000)), f"Seeded {i}", born0 + timedelta(days=i // 1000))
              for i in range(first, first + n)]
    try:
        async with conn.transaction():
            ids = await conn.fetch(
                "INSERT INTO holders (citizen_id, name, birth_date, category)"
                " SELECT c, nm, b, 0 FROM unnest($1::text[], $2::text[], $3::date[]) AS u(c, nm, b)"
                " RETURNING holder_id, citizen_id",
                [p[0] for p in people], [p[1] for p in people], [p[2] for p in people])
            by_cid = {r["citizen_id"]: r["holder_id"] for r in ids}
            n_shards = api.city.settings.city.account_shards
            out = [(by_cid[c], c, make_card_no(3_000_000 + first + i)) for i, (c, _, _) in enumerate(people)]
            await conn.copy_records_to_table(
                "cards", records=[(card, shard_of(card, n_shards), 0, h) for h, _, card in out],
                columns=["card_no", "shard_id", "status", "holder_id"])
    finally:
        await conn.close()
    shards = api.city.platform.shards
    groups: dict[int, list[int]] = {}
    for _, _, card in out:
        groups.setdefault(shard_of(card, len(shards)), []).append(card)
    await asyncio.gather(*(shards[s].add_cards.remote(cs) for s, cs in groups.items()))
    return out


async def balances(api: ApiCity, cards: list[int], purse: str = "general") -> dict[int, int]:
    out = {}
    for c in cards:
        r = await api.http.get(f"/cards/{c}/balance", headers=api.auth("read_only"))
        assert r.status_code == 200, r.text
        out[c] = r.json()["purses"][purse]
    return out


def test_programme_upload_run_and_report(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            admin = api.auth("programme_admin")
            # roles and bad input
            body = {"name": "Winter welfare", "kind": "welfare", "amount_fen": 1000}
            assert (await api.http.post("/programmes", headers=api.auth(), json=body)).status_code == 403
            r = await api.http.post("/programmes", headers=admin, json={**body, "kind": "consumer_vouchers"})
            assert r.status_code == 422 and "expiry" in r.json()["error"], r.text
            r = await api.http.post("/programmes", headers=admin, json={**body, "merchant_categories": ["retail"]})
            assert r.status_code == 422 and "merchant_categories" in r.json()["error"], r.text
            r = await api.http.post("/programmes", headers=admin, json={
                **body, "kind": "consumer_vouchers", "expiry": FUTURE, "merchant_categories": ["casino"]})
            assert r.status_code == 422 and r.json()["field"] == "merchant_categories", r.text
            r = await api.http.post("/programmes", headers=admin, json={**body, "amount_fen": 0})
            assert r.status_code == 422 and r.json()["field"] == "amount_fen", r.text
            assert (await api.http.get("/programmes/999", headers=admin)).status_code == 404

            pid = await programme(api, amount_fen=1000)
            cards = [await api.new_card(s) for s in range(1, 6)]  # holders 1..5, each with a card
            no_card = await api.new_holder(6)
            cancelled = await api.new_card(7)
            r = await api.http.post(f"/cards/{cancelled}/cancel", headers=api.auth(),
                                    json={"reason": "moved away", "idempotency_key": "c7"})
            assert r.status_code == 200, r.text

            csv = "\n".join([
                "citizen_id,amount_fen",
                f"{cid(1)},",  # line 2: the programme's amount
                f"{cid(2)},1500",  # 3
                f"{cid(900)},1000",  # 4: valid number, nobody holds it
                f"{cid(3)},abc",  # 5: bad amount
                f"{cid(1)},2000",  # 6: duplicate of line 2
                "12345,1000",  # 7: malformed
                f"{cid(4)},0",  # 8: bad amount
                f"{cid(5)},1,2",  # 9: too many fields
                "",  # blank: skipped
                f"{cid(6)}",  # 11: no card (refused at run time, accepted here)
                f"{cid(7).lower()},800",  # 12: its card is cancelled; lower-case x is fine
            ]) + "\r\n"
            assert (await api.http.post(f"/programmes/{pid}/beneficiaries", content=b"citizen_id\n",
                                        headers={**admin, "Content-Type": "text/plain"})).status_code == 415
            assert (await upload_csv(api, pid, "id,amount\n")).json()["field"] == "header"
            assert (await api.http.post(f"/programmes/{pid}/beneficiaries", content=csv.encode(), headers={
                **api.auth(), "Content-Type": "text/csv"})).status_code == 403
            r = await upload_csv(api, pid, csv)
            assert r.status_code == 200, r.text
            up = r.json()
            rejected = {(x["line"], x["reason"]) for x in up["rejected_lines"]}
            assert rejected == {(4, "unknown_citizen"), (5, "bad_amount"), (6, "duplicate"),
                                (7, "malformed_citizen_id"), (8, "bad_amount"), (9, "bad_line")}, up
            assert (up["lines"], up["accepted"], up["rejected"]) == (10, 4, 6), up
            assert up["rejected_by_reason"] == {"bad_amount": 2, "bad_line": 1, "duplicate": 1,
                                                "malformed_citizen_id": 1, "unknown_citizen": 1}
            dup = next(x for x in up["rejected_lines"] if x["line"] == 6)
            assert dup["detail"] == "the same citizen as line 2", dup

            # JSON: item numbers from 1; one already listed, one new, bad ones named
            items = [{"citizen_id": cid(3), "amount_fen": 700}, {"citizen_id": cid(1)},
                     {"citizen_id": cid(4), "amount_fen": -3}, {"citizen_id": 5}, [1],
                     {"citizen_id": cid(5), "amount_fen": None, "note": "x"},
                     {"citizen_id": cid(4), "amount_fen": "9"}, {"citizen_id": cid(4), "amount_fen": 2.5},
                     {"citizen_id": cid(5)}]
            r = await api.http.post(f"/programmes/{pid}/beneficiaries", headers=admin, json=items)
            assert r.status_code == 200, r.text
            up2 = r.json()
            assert {(x["line"], x["reason"]) for x in up2["rejected_lines"]} == {
                (2, "duplicate"), (3, "bad_amount"), (4, "malformed_citizen_id"), (5, "bad_line"),
                (6, "bad_line"), (7, "bad_amount"), (8, "bad_amount")}, up2
            assert (up2["accepted"], up2["rejected"], up2["beneficiaries"]) == (2, 7, 6), up2
            page = (await api.http.get(f"/programmes/{pid}/uploads/{up2['upload_id']}/rejects?limit=3",
                                       headers=api.auth("read_only"))).json()
            assert [x["line"] for x in page["items"]] == [2, 3, 4] and page["next_after_line"] == 4, page
            for bad in (b"{}", b"[", b"5", b"", b"[\"\\u0000\"]", b"\xff"):
                r = await api.http.post(f"/programmes/{pid}/beneficiaries", content=bad,
                                        headers={**admin, "Content-Type": "application/json"})
                assert r.status_code == 422 and r.json()["field"] == "body", (bad, r.text)
            for bad in (b"citizen_id\n\xff\xfe\n", b"citizen_id\r\nA\rB\n", b"citizen_id\n\\.\nX\n",
                        b"citizen_id\na\x00b\n", b""):
                r = await api.http.post(f"/programmes/{pid}/beneficiaries", content=bad,
                                        headers={**admin, "Content-Type": "text/csv; charset=utf-8"})
                assert r.status_code == 422, (bad, r.text)
            odd = await api.http.post(f"/programmes/{pid}/beneficiaries", headers=admin, json=[
                [1], {"citizen_id": cid(5), "amount_fen": 1e300}, {"citizen_id": cid(5), "amount_fen": 12.0}])
            assert odd.status_code == 200 and odd.json()["rejected"] == 3, odd.text
            assert (await api.http.post(f"/programmes/{pid}/beneficiaries", headers=admin, json=[])).json()["lines"] == 0
            prog = (await api.http.get(f"/programmes/{pid}", headers=api.auth("read_only"))).json()
            assert prog["beneficiaries"] == 6 and prog["purse"] == "general", prog

            # the run: 4 holders with a live card are credited, 2 without are refused
            run = await start(api, pid)
            assert run["resumed"] is False
            run = await wait_run(api, run["run_id"])
            assert run["state"] == "done", run
            assert (run["total"], run["credited"], run["refused"], run["pending"]) == (6, 4, 2, 0), run
            assert run["credited_fen"] == 1000 + 1500 + 700 + 1000, run
            assert await balances(api, cards) == {cards[0]: 1000, cards[1]: 1500, cards[2]: 700, cards[3]: 0,
                                                  cards[4]: 1000}
            r = await api.http.get(f"/runs/{run['run_id']}/report", headers=api.auth("read_only"))
            assert r.status_code == 200, r.text
            report = r.json()
            by = {(g["outcome"], g["result"]): (g["items"], g["amount_fen"]) for g in report["by_result"]}
            assert by == {("credited", "OK"): (4, 4200), ("refused", "NO_LIVE_CARD"): (2, 1800)}, report
            refused = {x["holder_id"]: x for x in report["refused"]}
            assert set(refused) == {no_card["holder_id"], (await holder_of(api, cancelled))}, report
            assert all("no live card" in x["reason"] for x in refused.values())
            assert (await api.http.get("/runs/999999", headers=admin)).status_code == 404

            entries = (await api.http.get(f"/audit?subject=programme:{pid}", headers=api.auth("auditor"))).json()
            assert [e["action"] for e in entries] == [
                "programme.create", *["programme.upload"] * 4, "programme.run_start"], entries
            assert entries[1]["after"]["accepted"] == 4 and entries[0]["operator"] == "test-programme_admin"

    asyncio.run(scenario())


async def holder_of(api: ApiCity, card_no: int) -> int:
    r = await api.http.get(f"/cards/{card_no}", headers=api.auth("read_only"))
    return int(r.json()["holder_id"])


def test_rerunning_a_period_credits_nobody_twice(configured_services, schema):
    # A tiny op memory: most keys are answered from the journal, not the shard's memory.
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20, ledger={"dedupe_limit": 5},
                            api={"disbursement_batch": 7}) as api:
            people = await seed_holders(api, 60)
            cards = [c for _, _, c in people]
            pid = await programme(api, amount_fen=1234)
            r = await upload_csv(api, pid, "citizen_id\n" + "\n".join(c for _, c, _ in people))
            assert r.json()["accepted"] == 60, r.text

            first = await wait_run(api, (await start(api, pid))["run_id"])
            assert (first["credited"], first["refused"], first["state"]) == (60, 0, "done"), first
            assert await credit_rows(api, pid) == dict.fromkeys(cards, 1)
            assert set((await balances(api, cards)).values()) == {1234}

            # the same period again: resumed, nothing to send, nobody credited again
            again = await start(api, pid)
            assert again["resumed"] is True and again["run_id"] == first["run_id"], again
            again = await wait_run(api, again["run_id"])
            assert (again["credited"], again["credited_fen"]) == (60, 60 * 1234), again

            # every result lost (as if none had been recorded): all 60 keys go to the shards
            # again, which answer from their journal; still one credit each
            conn = await api.city.conn()
            try:
                await conn.execute("UPDATE disbursement_items SET state = 0, result = NULL WHERE programme_id = $1",
                                   pid)
            finally:
                await conn.close()
            third = await wait_run(api, (await start(api, pid))["run_id"])
            assert (third["credited"], third["refused"], third["pending"]) == (60, 0, 0), third
            assert third["credited_fen"] == 60 * 1234, third
            assert await credit_rows(api, pid) == dict.fromkeys(cards, 1)
            assert set((await balances(api, cards)).values()) == {1234}

            # a new holder joins the list: a re-run of the period credits only the newcomer
            late = await seed_holders(api, 1, first=500)
            assert (await upload_csv(api, pid, f"citizen_id\n{late[0][1]}\n")).json()["accepted"] == 1
            fourth = await wait_run(api, (await start(api, pid))["run_id"])
            assert (fourth["total"], fourth["credited"]) == (61, 61), fourth
            assert await credit_rows(api, pid) == dict.fromkeys([*cards, late[0][2]], 1)

            # another period is another credit, once
            nxt = await wait_run(api, (await start(api, pid, "2026-12"))["run_id"])
            assert nxt["credited"] == 61, nxt
            assert set((await balances(api, cards)).values()) == {2 * 1234}
            assert await credit_rows(api, pid, "2026-12") == dict.fromkeys([*cards, late[0][2]], 1)

    asyncio.run(scenario())


def test_a_stopped_run_resumes_and_credits_each_holder_once(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20, api={"disbursement_batch": 10}) as api:
            people = await seed_holders(api, 5000)
            pid = await programme(api, amount_fen=500)
            r = await upload_csv(api, pid, "citizen_id\n" + "\n".join(c for _, c, _ in people))
            assert r.json()["accepted"] == 5000, r.text
            run = await start(api, pid)
            # stop it midway: calls in flight still credit; their results are not recorded
            midway = await wait_run(api, run["run_id"], until=("running",))
            while midway["credited"] < 300:
                midway = await wait_run(api, run["run_id"], until=("running", "done"))
                assert midway["state"] == "running", "the run ended before it could be stopped"
            r = await api.http.post(f"/runs/{run['run_id']}/stop", headers=api.auth("programme_admin"))
            assert r.status_code == 200, r.text
            stopped = r.json()
            assert stopped["state"] == "stopped" and 0 < stopped["credited"] < 5000, stopped
            journaled = sum((await credit_rows(api, pid)).values())
            assert journaled >= stopped["credited"]

            resumed = await start(api, pid)
            assert resumed["resumed"] is True
            done = await wait_run(api, resumed["run_id"])
            assert (done["state"], done["credited"], done["credited_fen"]) == ("done", 5000, 5000 * 500), done
            assert await credit_rows(api, pid) == {c: 1 for _, _, c in people}
            sample = [c for _, _, c in people[::150]]
            assert set((await balances(api, sample)).values()) == {500}
            entries = (await api.http.get(f"/audit?subject=programme:{pid}", headers=api.auth("auditor"))).json()
            assert [e["action"] for e in entries][-3:] == ["programme.run_start", "programme.run_stop",
                                                           "programme.run_start"]

    asyncio.run(scenario())


def test_a_run_survives_a_shard_crash_and_a_platform_restart(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20, api={"disbursement_batch": 10}) as api:
            people = await seed_holders(api, 5000)
            pid = await programme(api, amount_fen=300)
            assert (await upload_csv(api, pid, "citizen_id\n" + "\n".join(c for _, c, _ in people))).status_code == 200
            run_id = (await start(api, pid))["run_id"]
            midway = await wait_run(api, run_id, until=("running",))
            while midway["credited"] < 300:
                midway = await wait_run(api, run_id, until=("running", "done"))
                assert midway["state"] == "running", "the run ended before the crash"
            # a shard process dies mid-run; Ray restarts it, it reloads from Postgres, and the
            # runner's resent batch is answered from the journal
            ray.kill(api.city.platform.shards[0], no_restart=False)
            while midway["credited"] < 1500:
                midway = await wait_run(api, run_id, until=("running", "done"))
                assert midway["state"] == "running", "the run ended before the restart"

            # the API process goes down: its runner stops without a word (the record still says
            # running), then the platform comes back on the same schema and resumes the run
            for t in asyncio.all_tasks():
                if t.get_name() == f"disbursement-run-{run_id}":
                    t.cancel()
                    await asyncio.gather(t, return_exceptions=True)
            old = api.city.platform
            await old.stop()
            platform = Platform(api.city.settings, old.services)
            await platform.start(gateway_port=0, metrics_port=0, api_port=0)
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{platform.api_port}", timeout=30) as http:
                    api2 = ApiCity(api.city, http, api.tokens)
                    api2.city.platform = platform
                    # the new API resumed the run the record says is running, by itself
                    assert run_id in platform.api.app.state.disbursement_runs._runners or \
                        (await http.get(f"/runs/{run_id}", headers=api.auth("read_only"))).json()["state"] == "done"
                    done = await wait_run(api2, run_id)
                    assert (done["state"], done["credited"], done["refused"]) == ("done", 5000, 0), done
                    assert await credit_rows(api2, pid) == {c: 1 for _, _, c in people}
                    sample = [c for _, _, c in people[::100]]
                    assert set((await balances(api2, sample)).values()) == {300}
            finally:
                api.city.platform = old
                await platform.stop()

    asyncio.run(scenario())


def test_vouchers_and_allowance_land_on_the_card_and_pay(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            card = await api.new_card(1)
            vouchers = await programme(api, "consumer_vouchers", 2000, expiry=FUTURE,
                                       merchant_categories=["retail", "books", "retail"])
            allowance = await programme(api, "transport_allowance", 500, expiry=FUTURE)
            prog = (await api.http.get(f"/programmes/{vouchers}", headers=api.auth("read_only"))).json()
            assert prog["purse"] == "voucher" and prog["merchant_categories"] == ["books", "retail"], prog
            for pid in (vouchers, allowance):
                assert (await upload_csv(api, pid, f"citizen_id\n{cid(1)}\n")).json()["accepted"] == 1
                run = await wait_run(api, (await start(api, pid))["run_id"])
                assert run["credited"] == 1, run
            view = (await api.http.get(f"/cards/{card}", headers=api.auth("read_only"))).json()
            assert view["purses"]["voucher"] == 2000 and view["purses"]["allowance"] == 500, view
            assert view["voucher_until_ms"] == FUTURE_MS and view["allowance_until_ms"] == FUTURE_MS, view
            assert view["voucher_categories"] == ["books", "retail"], view
            assert view["purses"]["epurse"] == 0, view

            client = await api.city.client()
            try:
                now_ms = int(time.time() * 1000)
                bus = await client.tap(1, card, now_ms, int(TapKind.BUS), 12)
                assert bus.code == Result.OK and bus.fare_fen == 182, bus  # paid by the allowance alone
                shop = await client.tap(2, card, now_ms + 1000, int(TapKind.MERCHANT), 9001, 1500)
                assert shop.code == Result.OK, shop  # retail: the vouchers pay
                dinner = await client.tap(3, card, now_ms + 2000, int(TapKind.MERCHANT), 9003, 100)
                assert dinner.code == Result.INSUFFICIENT_FUNDS, dinner  # dining: not with vouchers
            finally:
                await client.close()
            view = (await api.http.get(f"/cards/{card}", headers=api.auth("read_only"))).json()
            assert view["purses"]["allowance"] == 500 - 182 and view["purses"]["voucher"] == 500, view

    asyncio.run(scenario())
