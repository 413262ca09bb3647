"""docs/api.md's table of what each card status allows, row by row over HTTP on real services:
a lost card takes no money in or out at a counter, no new product and no payment PIN, yet its
holder can still look, and the card can be found, replaced or cancelled; a cancelled card
refuses everything."""

import asyncio

import pytest

from tests.support.city import ApiCity, api_city

pytestmark = pytest.mark.usefixtures("ray_cluster")

PIN = "482913"


async def ops_on(api: ApiCity, card: int, key: str) -> dict[str, tuple[int, str | None]]:
    """(status, result code) of each counter operation on the card."""
    h = api.auth()
    calls = {
        "top_up": api.top_up(card, 100, f"t-{key}"),
        "refund": api.http.post(f"/cards/{card}/refunds", headers=h,
                                json={"amount_fen": 100, "idempotency_key": f"r-{key}", "reason": "asked"}),
        "monthly_pass": api.http.put(f"/cards/{card}/products/monthly_pass", headers=h, json={
            "valid_from": "2026-12-01T00:00:00+08:00", "valid_until": "2027-01-01T00:00:00+08:00"}),
        "pin_verify": api.http.post(f"/cards/{card}/pin/verify", headers=api.auth("payment"), json={"pin": PIN}),
    }
    out = {}
    for name, call in calls.items():
        r = await call
        out[name] = (r.status_code, r.json().get("result"))
    return out


def test_what_a_lost_and_a_cancelled_card_allow(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            h = api.auth()
            card = await api.new_card(1)
            assert (await api.top_up(card, 5000, "first")).status_code == 200
            r = await api.http.put(f"/cards/{card}/pin", headers=h, json={"pin": PIN})
            assert r.status_code == 201, r.text
            active = await ops_on(api, card, "active")
            assert {k: s for k, (s, _) in active.items()} == {
                "top_up": 200, "refund": 200, "monthly_pass": 200, "pin_verify": 200}, active

            r = await api.http.post(f"/cards/{card}/loss", headers=h, json={"reason": "lost on bus 7"})
            assert r.status_code == 200 and r.json()["status"] == "blocked", r.text
            lost = await ops_on(api, card, "lost")
            assert lost == {"top_up": (409, "CARD_BLOCKED"), "refund": (409, "CARD_BLOCKED"),
                            "monthly_pass": (409, "CARD_BLOCKED"), "pin_verify": (409, "CARD_BLOCKED")}, lost
            # the holder can still log in and look, and the card keeps its money
            session = await api.session(card, PIN)
            r = await api.http.get("/self/balance", headers=session)
            assert r.status_code == 200 and r.json()["purses"]["epurse"] == 5000, r.text
            r = await api.http.get(f"/cards/{card}/transactions", headers=h)
            assert r.status_code == 200
            # found again: everything works again
            r = await api.http.post(f"/cards/{card}/loss/cancel", headers=h, json={"reason": "found"})
            assert r.status_code == 200 and r.json()["status"] == "active", r.text
            again = await ops_on(api, card, "found")
            assert {k: s for k, (s, _) in again.items()} == {
                "top_up": 200, "refund": 200, "monthly_pass": 200, "pin_verify": 200}, again

            # lost again, then cancelled: a lost card can be cancelled (its money paid back) ...
            await api.http.post(f"/cards/{card}/loss", headers=h, json={"reason": "lost again"})
            r = await api.http.post(f"/cards/{card}/cancel", headers=h,
                                    json={"reason": "moved away", "idempotency_key": "c1"})
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
            # ... and once cancelled it refuses everything, self-service included
            gone = await ops_on(api, card, "cancelled")
            assert gone == {"top_up": (409, "CARD_CANCELLED"), "refund": (409, "CARD_CANCELLED"),
                            "monthly_pass": (409, "CARD_CANCELLED"), "pin_verify": (409, "CARD_CANCELLED")}, gone
            r = await api.log_in(card, PIN)
            assert r.status_code == 403 and r.json()["result"] == "CARD_CANCELLED", r.text
            r = await api.http.get("/self/balance", headers=session)  # the live session ends with the card
            assert r.status_code == 403 and r.json()["result"] == "CARD_CANCELLED", r.text
            r = await api.http.post(f"/cards/{card}/loss/cancel", headers=h, json={"reason": "found"})
            assert r.status_code == 409, r.text

            # a lost card is replaced: the money moves to the new card, which works
            other = await api.new_card(2)
            assert (await api.top_up(other, 2000, "o1")).status_code == 200
            await api.http.post(f"/cards/{other}/loss", headers=h, json={"reason": "lost"})
            r = await api.http.post(f"/cards/{other}/replace", headers=h, json={"reason": "lost"})
            assert r.status_code == 201, r.text
            new = int(r.json()["card_no"])
            r = await api.http.get(f"/cards/{new}/balance", headers=h)
            assert r.json()["purses"]["epurse"] == 2000, r.text

    asyncio.run(scenario())
