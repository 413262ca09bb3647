"""The merchant-alliance desk end to end: a merchant and its POS terminals registered through
the HTTP API, taps through the gateway's socket priced by the shards on Ray, and the window's
settlement line on Postgres, with the member discounts given."""

import asyncio
import time
from datetime import UTC, datetime

import pytest

from citycard.config.fare_table import load_fare_tables
from citycard.domain.results import Result
from citycard.domain.settlement import CLOSE_GRACE_MS
from citycard.domain.taps import TapKind
from citycard.persistence import settlement
from citycard.protocols.codes import ErrorCode
from citycard.terminal.client import ServerError
from tests.support.city import ApiCity, api_city

pytestmark = pytest.mark.usefixtures("ray_cluster")

SHOP = 7001  # not in the shipped fare table: only the registration makes it a merchant
POS = [880001, 880002]
MERCHANT = int(TapKind.MERCHANT)


def _body(**change: object) -> dict[str, object]:
    return {"merchant_id": SHOP, "name": "Corner books", "category": "books", "member_discount_percent": 20,
            "commission_bp": 200, "terminal_ids": POS, **change}


async def _card(api: ApiCity, serial: int, member: bool) -> int:
    card = await api.new_card(serial, apps={"merchant_member": member})
    r = await api.top_up(card, 10_000, f"merchant-test-{serial}")
    assert r.status_code == 200, r.text
    return card


def test_registered_merchant_discount_applies_at_its_pos_and_settles(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            desk = api.auth("merchant_desk")
            # who may: the desk, not a counter clerk; everyone with READ may look
            r = await api.http.post("/merchants", headers=api.auth("clerk"), json=_body())
            assert r.status_code == 403, r.text
            # bad input: 422 naming the field, nothing written
            for bad, field in ((_body(category="casino"), "category"), (_body(member_discount_percent=101),
                               "member_discount_percent"), (_body(member_discount_percent="5"),
                               "member_discount_percent"), (_body(commission_bp=10_001), "commission_bp"),
                               (_body(terminal_ids=[0]), "terminal_ids"), (_body(extra=1), "extra")):
                r = await api.http.post("/merchants", headers=desk, json=bad)
                assert r.status_code == 422 and field in r.json()["field"], (bad, r.text)
            assert (await api.http.get(f"/merchants/{SHOP}", headers=desk)).status_code == 404

            member, plain = await _card(api, 1, True), await _card(api, 2, False)
            with pytest.raises(ServerError) as refused:  # a POS not registered may not authenticate
                await api.city.client(POS[0])
            assert refused.value.error.code == ErrorCode.UNKNOWN_TERMINAL

            before_ms = int(time.time() * 1000)
            r = await api.http.post("/merchants", headers=desk, json=_body())
            assert r.status_code == 201, r.text
            shown = r.json()
            assert (shown["member_discount_percent"], shown["commission_bp"], shown["counterparty_id"]) == \
                (20, 200, f"merchant-{SHOP}"), shown
            assert [t["terminal_id"] for t in shown["terminals"]] == POS and shown["registered_ms"] >= before_ms
            # the same request again: 200, nothing new; other terms or a taken terminal: 409 with the reason
            again = await api.http.post("/merchants", headers=desk, json=_body())
            assert again.status_code == 200 and again.json() == shown, again.text
            r = await api.http.post("/merchants", headers=desk, json=_body(member_discount_percent=30))
            assert r.status_code == 409 and "member_discount_percent" in r.json()["error"], r.text
            r = await api.http.post("/merchants", headers=desk, json=_body(merchant_id=SHOP + 1, terminal_ids=[POS[0]]))
            assert r.status_code == 409 and r.json()["terminals"] == [POS[0]], r.text
            bus_terminal = api.city.terminals[0].terminal_id
            r = await api.http.post(f"/merchants/{SHOP}/terminals", headers=desk, json={"terminal_ids": [bus_terminal]})
            assert r.status_code == 409 and r.json()["result"] == "terminal_conflict", r.text
            listed = (await api.http.get("/merchants", headers=api.auth("read_only"))).json()
            assert [(m["merchant_id"], m["terminals"]) for m in listed] == [(SHOP, 2)], listed

            # the taps, through the gateway's socket, priced by the shards on Ray
            t0 = int(time.time() * 1000)
            pos = await api.city.client(POS[0])
            try:
                paid = [await pos.tap(1, member, t0, MERCHANT, SHOP, 1000), await pos.tap(2, plain, t0, MERCHANT, SHOP, 1000)]
                assert [(x.code, x.fare_fen) for x in paid] == [(Result.OK, 800), (Result.OK, 1000)], paid
                # a change from a later time: refused if in the past, taps before it keep the old discount
                r = await api.http.post(f"/merchants/{SHOP}/discounts", headers=desk,
                                        json={"member_discount_percent": 10, "effective_from_ms": t0 - 1})
                assert r.status_code == 422 and r.json()["field"] == "effective_from_ms", r.text
                change_ms = int(time.time() * 1000) + 1500
                r = await api.http.post(f"/merchants/{SHOP}/discounts", headers=desk,
                                        json={"member_discount_percent": 10, "effective_from_ms": change_ms})
                assert r.status_code == 201, r.text
                assert r.json()["member_discount_percent"] == 20  # not in force yet
                late = await pos.tap(3, member, change_ms - 1, MERCHANT, SHOP, 1000)
                assert (late.code, late.fare_fen) == (Result.OK, 800), late
                await asyncio.sleep(max(0.0, (change_ms - time.time() * 1000) / 1000) + 0.1)
                after = await pos.tap(4, member, change_ms, MERCHANT, SHOP, 1000)
                assert (after.code, after.fare_fen) == (Result.OK, 900), after
            finally:
                await pos.close()
            shown = (await api.http.get(f"/merchants/{SHOP}", headers=api.auth("read_only"))).json()
            assert shown["member_discount_percent"] == 10, shown
            assert [(d["effective_from_ms"] >= before_ms, d["member_discount_percent"]) for d in shown["discounts"]] == \
                [(True, 20), (True, 10)], shown

            # the window's settlement line: gross, commission, net, and the member discounts given
            end_ms = int(time.time() * 1000) + 1
            window = datetime.fromtimestamp(end_ms / 1000, UTC).strftime("%Y-%m-%d")
            conn = await api.city.conn()
            try:
                closing = await settlement.close_window(conn, load_fare_tables(api.city.settings.fare_table_path()), window, t0 - 60_000, end_ms,
                                                        end_ms + CLOSE_GRACE_MS, 0)
            finally:
                await conn.close()
            assert closing.code == 0, closing
            r = await api.http.get(f"/merchants/{SHOP}/settlement/{window}", headers=api.auth("read_only"))
            assert r.status_code == 200, r.text
            line = r.json()
            assert {k: line[k] for k in ("state", "taps", "gross_fen", "commission_fen", "net_fen", "member_taps",
                                         "member_discount_fen")} == {
                "state": "closed", "taps": 4, "gross_fen": 800 + 1000 + 800 + 900, "commission_fen": 70,
                "net_fen": 3500 - 70, "member_taps": 3, "member_discount_fen": 200 + 200 + 100}, line

            # every change in the audit log, by the desk's operator
            entries = (await api.http.get("/audit", headers=api.auth("auditor"),
                                          params={"subject": f"merchant:{SHOP}"})).json()
            assert [(e["action"], e["operator"]) for e in entries] == [
                ("merchant.register", "test-merchant_desk"), ("merchant.terminals", "test-merchant_desk"),
                ("merchant.discount", "test-merchant_desk")], entries

    asyncio.run(scenario())
