"""PINs and the self-service channel end to end through HTTP, on real Postgres, Redis and Ray.

The KDF cost is lowered for speed (pin_kdf_n=1024); the lockout and its counting are the
production ones. PINs are verified by a payment channel's token; holders log in with card
number, identity number and PIN (test_self_service_abuse.py has the stranger's side).
"""

import asyncio
import hashlib
import json
import re
import time

import pytest

from citycard.cards.pin_kdf import KdfParams, hash_pin, new_salt
from citycard.domain.results import Result
from tests.support.city import ApiCity, api_city
from tests.support.terminal import ride

pytestmark = pytest.mark.usefixtures("ray_cluster")

PIN, OTHER, THIRD = "482913", "735160", "905218"
FAST_KDF = {"pin_kdf_n": 1024}


def cheap_city(urls, schema):  # noqa: ANN001, ANN201
    return api_city(urls, schema, n_cards=20, api=FAST_KDF)


async def verify(api: ApiCity, card: int, pin: str, role: str = "payment"):  # noqa: ANN201 - httpx.Response
    return await api.http.post(f"/cards/{card}/pin/verify", headers=api.auth(role), json={"pin": pin})


async def change(api: ApiCity, card: int, session: dict[str, str], old: str, new: str):  # noqa: ANN201
    return await api.http.post("/self/pin/change", headers=session, json={"old_pin": old, "new_pin": new})


async def set_pin(api: ApiCity, card: int, pin: str = PIN) -> None:
    r = await api.http.put(f"/cards/{card}/pin", headers=api.auth(), json={"pin": pin})
    assert r.status_code == 201, r.text


async def pin_row(api: ApiCity, card: int):  # noqa: ANN201 - asyncpg.Record
    conn = await api.city.conn()
    try:
        return await conn.fetchrow("SELECT * FROM card_pins WHERE card_no = $1", card)
    finally:
        await conn.close()


async def audit(api: ApiCity, card: int) -> list[dict]:
    r = await api.http.get(f"/audit?subject=card:{card}&limit=1000", headers=api.auth("auditor"))
    assert r.status_code == 200, r.text
    return r.json()


def assert_no_pin_in(entries: list[dict], *pins: str) -> None:
    text = json.dumps(entries)
    for pin in pins:
        assert not re.search(rf"(?<![0-9]){pin}(?![0-9])", text), (pin, text)


def test_set_verify_lockout_reset_change(configured_services, schema):
    async def scenario() -> None:
        async with cheap_city(configured_services, schema) as api:
            max_tries = api.city.settings.api.pin_max_tries
            assert max_tries >= 3
            card = await api.new_card(1)

            # who may set it, and input checks, before any PIN exists
            assert (await api.http.put(f"/cards/{card}/pin", json={"pin": PIN})).status_code == 401
            r = await api.http.put(f"/cards/{card}/pin", headers=api.auth("read_only"), json={"pin": PIN})
            assert r.status_code == 403, r.text
            for bad in ("12345", "1234567", "12345a", "１２３４５６", 482913):
                r = await api.http.put(f"/cards/{card}/pin", headers=api.auth(), json={"pin": bad})
                assert r.status_code == 422 and r.json()["field"] == "pin", (bad, r.text)
            # a weak PIN is refused at the counter too
            for weak in ("123456", "000000", "121212", "900517"):  # the last: the holder's birthday
                r = await api.http.put(f"/cards/{card}/pin", headers=api.auth(), json={"pin": weak})
                assert r.status_code == 422 and r.json()["field"] == "pin" and "guess" in r.json()["error"], r.text
            # verifying needs a payment channel's (or a clerk's) token: a stranger gets nowhere
            r = await api.http.post(f"/cards/{card}/pin/verify", json={"pin": PIN})
            assert r.status_code == 401 and "token" in r.json()["error"], r.text
            assert (await verify(api, card, PIN, role="read_only")).status_code == 403
            r = await verify(api, card, PIN)
            assert r.status_code == 409 and "no PIN" in r.json()["error"], r.text
            assert (await verify(api, card + 10, PIN)).status_code in (404, 422)  # unknown or bad check digit
            r = await api.http.post(f"/cards/{card}/pin/reset", headers=api.auth(),
                                    json={"new_pin": PIN, "reason": "x"})
            assert r.status_code == 409, r.text
            state = (await api.http.get(f"/cards/{card}/pin", headers=api.auth("read_only"))).json()
            assert state["pin_set"] is False and state["kdf"] is None

            # set: a slow KDF with its parameters stored, never a plain hash
            await set_pin(api, card)
            r = await api.http.put(f"/cards/{card}/pin", headers=api.auth(), json={"pin": OTHER})
            assert r.status_code == 409, r.text
            row = await pin_row(api, card)
            assert row["kdf"] == "scrypt:n=1024,r=8,p=1" and len(row["salt"]) == 16 and len(row["pin_hash"]) == 32
            assert row["pin_hash"] != hashlib.sha256(PIN.encode()).digest()
            assert row["pin_hash"] == hashlib.scrypt(PIN.encode(), salt=row["salt"], n=1024, r=8, p=1, dklen=32)

            # verify: right, wrong (counted), and a right PIN resets the count
            r = await verify(api, card, PIN)
            assert r.status_code == 200 and r.json() == {"ok": True}, r.text
            r = await verify(api, card, OTHER)
            assert r.status_code == 401 and r.json()["tries_left"] == max_tries - 1, r.text
            r = await verify(api, card, OTHER)
            assert r.status_code == 401 and r.json()["tries_left"] == max_tries - 2, r.text
            assert (await verify(api, card, PIN)).status_code == 200
            assert (await pin_row(api, card))["failed_tries"] == 0
            r = await verify(api, card, "12345")
            assert r.status_code == 422 and r.json()["field"] == "pin", r.text
            assert (await pin_row(api, card))["failed_tries"] == 0  # malformed: no try counted

            # lockout after max_tries wrong PINs in a row; then 423 even for the right PIN
            for i in range(max_tries):
                r = await verify(api, card, OTHER)
                assert r.status_code == 401 and r.json()["tries_left"] == max_tries - 1 - i, r.text
            assert "locked" in r.json()["error"]
            for pin in (PIN, OTHER):
                r = await verify(api, card, pin)
                assert r.status_code == 423 and "counter" in r.json()["error"], r.text
            r = await api.log_in(card, PIN)
            assert r.status_code == 423, r.text
            state = (await api.http.get(f"/cards/{card}/pin", headers=api.auth("read_only"))).json()
            assert state["locked"] is True and state["tries_left"] == 0 and state["failed_tries"] == max_tries

            # a counter reset replaces the PIN and unlocks it
            r = await api.http.post(f"/cards/{card}/pin/reset", headers=api.auth(), json={"new_pin": OTHER})
            assert r.status_code == 422 and r.json()["field"] == "reason", r.text
            for reason in ("", "   ", "a\x00b", "\ud800"):
                # json.dumps keeps a lone surrogate as an escape, as a real client would send it
                r = await api.http.post(f"/cards/{card}/pin/reset",
                                        headers={**api.auth(), "Content-Type": "application/json"},
                                        content=json.dumps({"new_pin": OTHER, "reason": reason}))
                assert r.status_code == 422 and r.json()["field"] == "reason", (reason, r.text)
            r = await api.http.post(f"/cards/{card}/pin/reset", headers=api.auth("read_only"),
                                    json={"new_pin": OTHER, "reason": "holder identified by ID card"})
            assert r.status_code == 403, r.text
            r = await api.http.post(f"/cards/{card}/pin/reset", headers=api.auth(),
                                    json={"new_pin": OTHER, "reason": "holder identified by ID card"})
            assert r.status_code == 200 and r.json()["locked"] is False and r.json()["tries_left"] == max_tries
            assert (await verify(api, card, PIN)).status_code == 401  # the old PIN is gone
            assert (await verify(api, card, OTHER)).status_code == 200

            r = await api.http.post(f"/cards/{card}/pin/reset", headers=api.auth(),
                                    json={"new_pin": "654321", "reason": "holder identified by ID card"})
            assert r.status_code == 422 and r.json()["field"] == "new_pin", r.text

            # change, in a self-service session: the old PIN is required, and a wrong one counts
            session = await api.session(card, OTHER)
            r = await api.http.post(f"/cards/{card}/pin/change", json={"old_pin": OTHER, "new_pin": THIRD})
            assert r.status_code in (404, 405), r.text  # the anonymous change is gone
            assert (await change(api, card, {}, OTHER, THIRD)).status_code == 401
            r = await change(api, card, session, PIN, THIRD)
            assert r.status_code == 401 and r.json()["tries_left"] == max_tries - 1, r.text
            r = await change(api, card, session, OTHER, OTHER)
            assert r.status_code == 422 and r.json()["field"] == "new_pin", r.text
            r = await change(api, card, session, OTHER, "1234")
            assert r.status_code == 422 and r.json()["field"] == "new_pin", r.text
            r = await change(api, card, session, OTHER, "111111")
            assert r.status_code == 422 and r.json()["field"] == "new_pin", r.text
            r = await change(api, card, session, OTHER, THIRD)
            assert r.status_code == 200 and r.json() == {"ok": True}, r.text
            assert (await verify(api, card, OTHER)).status_code == 401
            assert (await verify(api, card, THIRD)).status_code == 200

            entries = await audit(api, card)
            pin_entries = [(e["action"], e["operator"], e["role"])
                           for e in entries if e["action"].startswith("pin.")]
            assert pin_entries == [
                ("pin.set", "test-clerk", "clerk"), ("pin.lockout", f"self:{card}", "self_service"),
                ("pin.reset", "test-clerk", "clerk"), ("pin.change", f"self:{card}", "self_service")]
            reset = next(e for e in entries if e["action"] == "pin.reset")
            assert reset["before"]["locked"] is True and reset["after"]["failed_tries"] == 0
            assert reset["reason"] == "holder identified by ID card"
            assert_no_pin_in(entries, PIN, OTHER, THIRD)

            # a cancelled card's PIN is of no use
            r = await api.http.post(f"/cards/{card}/cancel", headers=api.auth(),
                                    json={"reason": "moved away", "idempotency_key": "c1"})
            assert r.status_code == 200, r.text
            r = await verify(api, card, THIRD)
            assert r.status_code == 409 and r.json()["result"] == "CARD_CANCELLED", r.text

    asyncio.run(scenario())


def test_concurrent_wrong_guesses_count_exactly_up_to_the_limit(configured_services, schema):
    async def scenario() -> None:
        # one source may have every check in flight here: this is about the lockout's counting
        async with api_city(configured_services, schema, n_cards=20,
                            api={**FAST_KDF, "kdf_in_flight_per_source": 64}) as api:
            max_tries = api.city.settings.api.pin_max_tries
            card = await api.new_card(1)
            await set_pin(api, card)
            guesses = [f"{100000 + i:06d}" for i in range(20)]
            answers = await asyncio.gather(*(verify(api, card, g) for g in guesses))
            codes = [r.status_code for r in answers]
            # only max_tries guesses were ever checked; the others found the tries used up, or
            # taken by checks still running (429: nothing locked yet, retry)
            assert codes.count(401) == max_tries and set(codes) <= {401, 423, 429}, [r.text for r in answers]
            assert sorted(r.json()["tries_left"] for r in answers if r.status_code == 401) == list(range(max_tries))
            assert all(r.headers["Retry-After"] == "1" for r in answers if r.status_code == 429)
            assert (await pin_row(api, card))["failed_tries"] == max_tries
            assert (await verify(api, card, PIN)).status_code == 423
            lockouts = [e for e in await audit(api, card) if e["action"] == "pin.lockout"]
            assert len(lockouts) == 1, lockouts

            # a right PIN among concurrent wrong ones: it forgives only the failures settled
            # before it, so at most max_tries wrong guesses on either side of it are checked
            card2 = await api.new_card(2)
            await set_pin(api, card2)
            answers = await asyncio.gather(*(verify(api, card2, g) for g in [*guesses[:10], PIN, *guesses[10:]]))
            right = answers[10]
            wrong = [r for r in answers[:10] + answers[11:] if r.status_code == 401]
            assert right.status_code in (200, 423, 429), right.text
            assert all(r.status_code in (401, 423, 429) for r in answers[:10] + answers[11:])
            failed = (await pin_row(api, card2))["failed_tries"]
            assert failed <= max_tries and failed <= len(wrong) <= 2 * max_tries - 1, (failed, len(wrong))

    asyncio.run(scenario())


def test_many_right_pins_at_once_are_never_told_locked(configured_services, schema):
    """The review's finding: more than pin_max_tries concurrent right PINs answered 423
    "locked" though nothing was locked. Now each is checked, or told to retry (429)."""
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20,
                            api={**FAST_KDF, "kdf_in_flight_per_source": 64}) as api:
            max_tries = api.city.settings.api.pin_max_tries
            card = await api.new_card(1)
            await set_pin(api, card)
            answers = await asyncio.gather(*(verify(api, card, PIN) for _ in range(4 * max_tries)))
            codes = [r.status_code for r in answers]
            assert 423 not in codes and set(codes) <= {200, 429}, [r.text for r in answers]
            assert codes.count(200) >= max_tries
            assert all(r.headers["Retry-After"] == "1" and "in progress" in r.json()["error"]
                       for r in answers if r.status_code == 429)
            row = await pin_row(api, card)
            assert row["failed_tries"] == 0 and row["pending_tries"] == 0
            assert (await verify(api, card, PIN)).status_code == 200  # and a retry gets through

    asyncio.run(scenario())


def test_a_stored_lower_cost_is_verified_then_raised(configured_services, schema):
    async def scenario() -> None:
        async with cheap_city(configured_services, schema) as api:
            card = await api.new_card(1)
            salt = new_salt()
            old_hash, old_kdf = hash_pin(PIN, salt, KdfParams(256))  # as stored before the cost was raised
            conn = await api.city.conn()
            try:
                await conn.execute("INSERT INTO card_pins (card_no, pin_hash, salt, kdf, failed_tries)"
                                   " VALUES ($1, $2, $3, $4, 1)", card, old_hash, salt, old_kdf)
            finally:
                await conn.close()
            assert (await verify(api, card, OTHER)).status_code == 401  # checked with n=256: wrong
            assert (await pin_row(api, card))["kdf"] == "scrypt:n=256,r=8,p=1"
            assert (await verify(api, card, PIN)).status_code == 200
            row = await pin_row(api, card)
            assert row["kdf"] == "scrypt:n=1024,r=8,p=1" and row["salt"] != salt and row["failed_tries"] == 0
            assert row["pin_hash"] == hashlib.scrypt(PIN.encode(), salt=row["salt"], n=1024, r=8, p=1, dklen=32)
            assert (await verify(api, card, PIN)).status_code == 200
            assert [e["action"] for e in await audit(api, card)][-1] == "pin.rehash"

    asyncio.run(scenario())


def test_self_service_balance_history_and_loss(configured_services, schema):
    async def scenario() -> None:
        async with cheap_city(configured_services, schema) as api:
            max_tries = api.city.settings.api.pin_max_tries
            card = await api.new_card(1)

            r = await api.log_in(card, PIN)
            assert r.status_code == 409 and "no PIN" in r.json()["error"], r.text  # the holder: told why
            await set_pin(api, card)
            assert (await api.top_up(card, 5000, "t1")).status_code == 200
            assert (await api.top_up(card, 700, "t2")).status_code == 200

            # no, malformed or unknown sessions
            assert (await api.http.get("/self/balance")).status_code == 401
            for bad in ("Basic !!!", "Bearer ss_" + "0" * 64, "Bearer nonsense", f"Bearer {api.tokens['clerk']}"):
                r = await api.http.get("/self/balance", headers={"Authorization": bad})
                assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", (bad, r.text)
            # malformed login input: 422 naming the field, no try counted
            r = await api.http.post("/self/session", json={"card_no": "abc", "citizen_id": "x", "pin": PIN})
            assert r.status_code == 422, r.text
            r = await api.log_in(card + 1, PIN, citizen_id=api.citizen_ids[card])  # bad check digit
            assert r.status_code == 422 and r.json()["field"] == "card_no", r.text
            r = await api.log_in(card, "12345")
            assert r.status_code == 422 and r.json()["field"] == "pin", r.text
            assert (await pin_row(api, card))["failed_tries"] == 0

            login = await api.session(card, PIN)
            created = (await api.log_in(card, PIN)).json()
            assert created["card_no"] == card and created["expires_in_s"] == 900
            assert created["session_token"].startswith("ss_")
            r = await api.http.get("/self/balance", headers=login)
            assert r.status_code == 200 and r.json()["purses"]["epurse"] == 5700 and r.json()["status"] == "active"
            page = (await api.http.get("/self/transactions?limit=1", headers=login)).json()
            assert [i["kind"] for i in page["items"]] == ["top_up"] and page["items"][0]["amount_fen"] == -700
            older = (await api.http.get(f"/self/transactions?limit=10&before_lsn={page['next_before_lsn']}",
                                        headers=login)).json()
            assert [i["amount_fen"] for i in older["items"]] == [-5000] and older["next_before_lsn"] is None
            r = await api.http.get("/self/transactions?limit=0", headers=login)
            assert r.status_code == 422 and r.json()["field"] == "limit", r.text

            # a wrong PIN with the holder's identity counts, together with the payment channel
            r = await api.log_in(card, OTHER)
            assert r.status_code == 401 and r.json()["tries_left"] == max_tries - 1, r.text
            r = await verify(api, card, OTHER)
            assert r.status_code == 401 and r.json()["tries_left"] == max_tries - 2, r.text
            assert (await api.log_in(card, PIN)).status_code == 201  # forgives the failures
            assert (await pin_row(api, card))["failed_tries"] == 0

            # loss report: at once refused at the gateway
            client = await api.city.client()
            try:
                assert (await ride(client, 1, card)).code == Result.OK
                r = await api.http.post("/self/loss", json={"reason": "lost"})
                assert r.status_code == 401, r.text
                r = await api.http.post("/self/loss", headers=login, json={"reason": "a\x00b"})
                assert r.status_code == 422 and r.json()["field"] == "reason", r.text
                reported_at = time.monotonic()
                r = await api.http.post("/self/loss", headers=login)  # the reason is optional
                assert r.status_code == 200 and r.json()["status"] == "blocked", r.text
                for seq in range(2, 100):
                    res = await ride(client, seq, card)
                    if res.code == Result.CARD_BLOCKED:
                        break
                    await asyncio.sleep(0.05)
                assert res.code == Result.CARD_BLOCKED, res
                assert time.monotonic() - reported_at < 1.0
            finally:
                await client.close()
            r = await api.http.post("/self/loss", headers=login, json={"reason": "again"})
            assert r.status_code == 200 and r.json()["status"] == "blocked", r.text  # nothing more to do
            r = await api.http.get("/self/balance", headers=login)  # a lost card can still look
            assert r.status_code == 200 and r.json()["status"] == "blocked", r.text
            assert (await api.log_in(card, PIN)).status_code == 201  # and log in
            r = await verify(api, card, PIN)  # but its PIN pays for nothing
            assert r.status_code == 409 and r.json()["result"] == "CARD_BLOCKED", r.text
            losses = [e for e in await audit(api, card) if e["action"] == "card.loss"]
            assert [(e["operator"], e["role"], e["reason"]) for e in losses] == [
                (f"self:{card}", "self_service", "reported lost by the holder")]

            # locked: 423 at login, even with the right PIN; a counter reset unlocks and ends
            # every session (whoever knew the old PIN is out)
            for _ in range(max_tries):
                await api.log_in(card, OTHER)
            r = await api.log_in(card, PIN)
            assert r.status_code == 423, r.text
            r = await api.http.post(f"/cards/{card}/pin/reset", headers=api.auth(),
                                    json={"new_pin": THIRD, "reason": "holder at the counter"})
            assert r.status_code == 200, r.text
            assert (await api.http.get("/self/balance", headers=login)).status_code == 401
            login = await api.session(card, THIRD)

            # log out
            assert (await api.http.delete("/self/session", headers=login)).status_code == 204
            assert (await api.http.get("/self/balance", headers=login)).status_code == 401
            login = await api.session(card, THIRD)

            # a cancelled card cannot log in; its live sessions stop working
            r = await api.http.post(f"/cards/{card}/cancel", headers=api.auth(),
                                    json={"reason": "lost for good", "idempotency_key": "c1"})
            assert r.status_code == 200, r.text
            for path in ("/self/balance", "/self/transactions"):
                r = await api.http.get(path, headers=login)
                assert r.status_code == 403 and r.json()["result"] == "CARD_CANCELLED", r.text
            assert (await api.http.post("/self/loss", headers=login)).status_code == 403
            r = await api.log_in(card, THIRD)
            assert r.status_code == 403 and r.json()["result"] == "CARD_CANCELLED", r.text
            assert_no_pin_in(await audit(api, card), PIN, OTHER, THIRD)

    asyncio.run(scenario())


def test_openapi_describes_pins_and_self_service(configured_services, schema):
    async def scenario() -> None:
        async with cheap_city(configured_services, schema) as api:
            doc = (await api.http.get("/openapi.json")).json()
            paths = doc["paths"]
            verify_op = paths["/cards/{card_no}/pin/verify"]["post"]
            assert {"200", "401", "403", "404", "409", "422", "423", "429"} <= set(verify_op["responses"])
            assert verify_op["security"] == [{"operator_token": []}]
            assert "/cards/{card_no}/pin/change" not in paths
            assert paths["/cards/{card_no}/pin"]["put"]["responses"]["201"]
            login = paths["/self/session"]["post"]
            assert "security" not in login and {"201", "401", "409", "423", "429"} <= set(login["responses"])
            for path, method in (("/self/balance", "get"), ("/self/transactions", "get"), ("/self/loss", "post"),
                                 ("/self/pin/change", "post"), ("/self/session", "delete")):
                op = paths[path][method]
                assert op["security"] == [{"holder_session": []}], op
                assert {"401", "403"} <= set(op["responses"])
            assert doc["components"]["securitySchemes"]["holder_session"]["scheme"] == "bearer"
            pin = doc["components"]["schemas"]["PinIn"]["properties"]["pin"]
            assert pin["pattern"] == "^[0-9]{6}$"

    asyncio.run(scenario())
