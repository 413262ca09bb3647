"""Card services end to end through HTTP, on real Postgres, Redis and Ray."""

import asyncio
import subprocess
import time

import asyncpg
import pytest

from citycard.api.auth import hash_token, token_id
from citycard.domain.cards import make_card_no
from citycard.domain.results import Result
from tests.support.city import api_city
from tests.support.cli import CITYCARD, citycard_env
from tests.support.terminal import ride

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_tokens_and_roles(services, schema):
    """On the machine's services and on the embedded ones."""

    async def scenario() -> None:
        async with api_city(services, schema, n_cards=20) as api:
            body = {"citizen_id": "11010519491231002X", "name": "Li Lei", "birth_date": "1949-12-31"}
            assert (await api.http.post("/holders", json=body)).status_code == 401
            bad = {"Authorization": "Bearer cc_nope"}
            assert (await api.http.post("/holders", json=body, headers=bad)).status_code == 401
            for role in ("read_only", "auditor", "programme_admin"):
                r = await api.http.post("/holders", json=body, headers=api.auth(role))
                assert r.status_code == 403, (role, r.text)
            r = await api.http.post("/holders", json=body, headers=api.auth("clerk"))
            assert r.status_code == 201, r.text
            holder_id = r.json()["holder_id"]
            assert (await api.http.get(f"/holders/{holder_id}", headers=api.auth("read_only"))).status_code == 200
            assert (await api.http.get("/audit", headers=api.auth("clerk"))).status_code == 403
            entries = (await api.http.get("/audit", headers=api.auth("auditor"))).json()
            assert [(e["action"], e["operator"]) for e in entries] == [("holder.apply", "test-clerk")]
            # the audit log is append-only in Postgres itself
            conn = await api.city.conn()
            try:
                with pytest.raises(Exception, match="append-only"):
                    await conn.execute("UPDATE audit_log SET operator = 'x'")
            finally:
                await conn.close()
            # and the API's own login may not even try, nor empty it
            async with api.city.platform.pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_user") == "citycard_app"
                for sql in ("UPDATE audit_log SET operator = 'x'", "TRUNCATE audit_log"):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(sql)

    asyncio.run(scenario())


def test_bad_input_names_the_field_and_unknown_things_are_404(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            h = api.auth()
            r = await api.http.post("/holders", headers=h, json={
                "citizen_id": "110105194912310021", "name": "Li Lei", "birth_date": "1949-12-31"})
            assert r.status_code == 422 and "check character" in r.json()["error"], r.text
            r = await api.http.post("/holders", headers=h, json={
                "citizen_id": "11010519491231002X", "name": "Li Lei", "birth_date": "1950-01-01"})
            assert r.status_code == 422 and "birth date" in r.json()["error"], r.text
            r = await api.http.post("/holders", headers=h, json={"citizen_id": "11010519491231002X"})
            assert r.status_code == 422 and r.json()["field"] == "name", r.text
            assert (await api.http.get("/holders/999999", headers=h)).status_code == 404
            card = await api.new_card(1)
            assert (await api.http.get(f"/cards/{card + 1}", headers=h)).status_code == 422  # check digit
            r = await api.top_up(card, -5, "k")
            assert r.status_code == 422 and r.json()["field"] == "amount_fen", r.text

    asyncio.run(scenario())


def test_a_card_life_at_the_counter(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            h = api.auth()
            holder = await api.new_holder(7)
            r = await api.http.post(f"/holders/{holder['holder_id']}/cards", headers=h, json={})
            assert r.status_code == 201, r.text
            card = r.json()["card_no"]
            assert str(card).startswith("330100")
            again = await api.http.post(f"/holders/{holder['holder_id']}/cards", headers=h, json={})
            assert again.status_code == 409, again.text  # one live card per holder

            # top-up once per key, however often it is retried
            first = await api.top_up(card, 5000, "till-1:0001")
            retry = await api.top_up(card, 5000, "till-1:0001")
            assert first.status_code == retry.status_code == 200, (first.text, retry.text)
            assert first.json()["replay"] is False and retry.json()["replay"] is True
            other = await api.top_up(card, 7000, "till-1:0001")  # same key, other amount
            assert other.status_code == 409, other.text
            over = await api.top_up(card, 10_000_000, "till-1:0002")
            assert over.status_code == 409 and over.json()["result"] == "PURSE_LIMIT", over.text
            assert (await api.top_up(card, 3000, "till-1:0003", purse="general")).status_code == 200
            bal = (await api.http.get(f"/cards/{card}/balance", headers=h)).json()
            assert bal["purses"]["epurse"] == 5000 and bal["purses"]["general"] == 3000

            # a tap on the new card is charged from the e-purse
            client = await api.city.client()
            try:
                res = await ride(client, 1, card)
                assert res.code == Result.OK and res.fare_fen == 182, res

                r = await api.http.post(f"/cards/{card}/refunds", headers=h, json={
                    "purse": "general", "amount_fen": 4000, "idempotency_key": "r1", "reason": "asked"})
                assert r.status_code == 409 and r.json()["result"] == "INSUFFICIENT_FUNDS", r.text
                r = await api.http.post(f"/cards/{card}/refunds", headers=h, json={
                    "purse": "general", "amount_fen": 1000, "idempotency_key": "r1", "reason": "asked"})
                assert r.status_code == 409, r.text  # key r1 was used by the refused refund
                r = await api.http.post(f"/cards/{card}/refunds", headers=h, json={
                    "purse": "general", "amount_fen": 1000, "idempotency_key": "r2", "reason": "asked"})
                assert r.status_code == 200 and r.json()["balance"]["general"] == 2000, r.text

                # monthly pass: route 12 at 50 %
                r = await api.http.put(f"/cards/{card}/products/monthly_pass", headers=h, json={
                    "valid_from": "2020-01-01T00:00:00+08:00", "valid_until": "2099-01-01T00:00:00+08:00"})
                assert r.status_code == 200 and r.json()["monthly_pass"] is not None, r.text
                res = await ride(client, 2, card)
                assert res.code == Result.OK and res.fare_fen == 100, res

                # applications
                r = await api.http.put(f"/cards/{card}/apps", headers=h, json={"library": True, "medical": True})
                assert r.status_code == 422 and r.json()["field"] == "apps.insurance", r.text
                r = await api.http.put(f"/cards/{card}/apps", headers=h, json={"library": True})
                assert r.status_code == 200 and r.json()["apps"]["library"] is True, r.text

                # loss report: refused at the gateway; found again: charged again
                r = await api.http.post(f"/cards/{card}/loss", headers=h, json={"reason": "lost on bus 12"})
                assert r.status_code == 200 and r.json()["status"] == "blocked", r.text
                await asyncio.sleep(1.0)
                res = await ride(client, 3, card)
                assert res.code == Result.CARD_BLOCKED, res
                r = await api.http.post(f"/cards/{card}/loss/cancel", headers=h, json={"reason": "found"})
                assert r.status_code == 200 and r.json()["status"] == "active", r.text
                await asyncio.sleep(1.0)
                res = await ride(client, 4, card, route=13)
                assert res.code == Result.OK, res
            finally:
                await client.close()

            # cancel: every purse refunded, the card dead for good
            before = (await api.http.get(f"/cards/{card}/balance", headers=h)).json()
            r = await api.http.post(f"/cards/{card}/cancel", headers=h, json={"reason": "moved away",
                                                                              "idempotency_key": "c1"})
            assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["total_fen"] == 0, r.text
            r = await api.top_up(card, 100, "after-cancel")
            assert r.status_code == 409 and r.json()["result"] == "CARD_CANCELLED", r.text

            # history from Postgres, newest first, paged
            page = (await api.http.get(f"/cards/{card}/transactions?limit=3", headers=h)).json()
            # refused ops are journaled too: the top-up after the cancellation is the newest
            assert [(i["kind"], i["result"]) for i in page["items"]] == [
                ("top_up", "CARD_CANCELLED"), ("cancel", "OK"), ("bus", "OK")]
            assert page["items"][1]["amount_fen"] == before["total_fen"]
            older = (await api.http.get(f"/cards/{card}/transactions?limit=100&before_lsn="
                                        f"{page['next_before_lsn']}", headers=h)).json()
            kinds = [i["kind"] for i in older["items"]]
            assert kinds.count("top_up") == 3 and older["next_before_lsn"] is None  # PURSE_LIMIT refused too
            entries = (await api.http.get(f"/audit?subject=card:{card}", headers=api.auth("auditor"))).json()
            assert [e["action"] for e in entries] == [
                "card.issue", "money.top_up", "money.top_up", "money.refund", "card.monthly_pass", "card.apps",
                "card.loss", "card.loss_cancel", "card.cancel"]

    asyncio.run(scenario())


def test_loss_cancel_clears_a_listing_the_shard_never_saw_and_a_pin_follows_a_replacement(configured_services,
                                                                                           schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20, api={"pin_kdf_n": 1024}) as api:
            h = api.auth()
            card = await api.new_card(21)
            await api.city.platform.hotlist_add(card, "listed by an operator tool")  # shard: still active
            r = await api.http.post(f"/cards/{card}/loss/cancel", headers=h, json={"reason": "found"})
            assert r.status_code == 200 and r.json()["status"] == "active", r.text
            conn = await api.city.conn()
            try:
                assert await conn.fetchval("SELECT count(*) FROM hotlist WHERE card_no = $1", card) == 0
            finally:
                await conn.close()

            assert (await api.http.put(f"/cards/{card}/pin", headers=h, json={"pin": "314159"})).status_code == 201
            r = await api.http.post(f"/cards/{card}/replace", headers=h, json={"reason": "worn out"})
            assert r.status_code == 201, r.text
            new = r.json()["card_no"]
            r = await api.http.post(f"/cards/{new}/pin/verify", headers=api.auth("payment"), json={"pin": "314159"})
            assert r.status_code == 200 and r.json()["ok"] is True, r.text

    asyncio.run(scenario())


def test_a_top_up_is_one_shard_call_and_one_audit_row(configured_services, schema):
    """A top-up (and a refund) over HTTP makes exactly one call to the card's shard: the op,
    whose outcome carries the card's view; the answer shows the balance from it."""

    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            card = await api.new_card(7)
            client = api.city.platform.shard_client
            conn = await api.city.conn()
            try:
                async def one(request) -> tuple[dict, int, int]:  # the answer, shard calls, audit rows
                    calls, audits = sum(client.calls.values()), await conn.fetchval("SELECT count(*) FROM audit_log")
                    r = await request
                    assert r.status_code == 200, r.text
                    assert client.calls["apply_ops"] >= 1
                    return (r.json(), sum(client.calls.values()) - calls,
                            await conn.fetchval("SELECT count(*) FROM audit_log") - audits)

                before = dict(client.calls)
                body, n_calls, n_audit = await one(api.top_up(card, 5000, "counter-7:1"))
                assert (n_calls, n_audit) == (1, 1)
                assert client.calls["apply_ops"] == before.get("apply_ops", 0) + 1
                assert body["balance"]["epurse"] == 5000 and body["purses_fen"] == {"epurse": 5000}, body
                body, n_calls, n_audit = await one(api.top_up(card, 5000, "counter-7:1"))  # a retry
                assert (n_calls, n_audit) == (1, 0) and body["replay"] is True, body
                body, n_calls, n_audit = await one(api.http.post(
                    f"/cards/{card}/refunds", headers=api.auth(),
                    json={"amount_fen": 1200, "idempotency_key": "counter-7:2", "reason": "asked for it back"}))
                assert (n_calls, n_audit) == (1, 1) and body["balance"]["epurse"] == 3800, body
                calls = sum(client.calls.values())
                assert (await api.top_up(card + 1, 100, "k")).status_code == 422  # check digit: no call
                assert sum(client.calls.values()) == calls
                unknown = make_card_no(10**10 - 1)  # a valid number no card has
                r = await api.top_up(unknown, 100, "k")
                assert r.status_code == 404 and sum(client.calls.values()) == calls + 1, r.text
            finally:
                await conn.close()

    asyncio.run(scenario())


def test_a_revoked_token_gets_401(configured_services, schema):
    """Revoked with ``citycard token revoke`` while the API runs; other tokens keep working."""

    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            reader = api.auth("read_only")
            assert (await api.http.get("/holders/999999", headers=reader)).status_code == 404
            ident = token_id(hash_token(api.tokens["read_only"]))
            out = await asyncio.to_thread(
                subprocess.run, [*CITYCARD, "token", "revoke", ident, "--reason", "test"],
                env=citycard_env(configured_services, schema), capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            deadline = time.monotonic() + 10  # the API caches a token's lookup for 5 s
            while (r := await api.http.get("/holders/999999", headers=reader)).status_code != 401:
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.5)
            assert "revoked" in r.json()["error"]
            assert (await api.http.get("/holders/999999", headers=api.auth("clerk"))).status_code == 404

    asyncio.run(scenario())
