"""The audit log proves what happened: one entry per operation and idempotency key, whether the
request is retried, stopped between its op and its entry, or never retried at all; and a
retry answers what the first attempt answered. Over HTTP on real Postgres, Redis and Ray."""

import asyncio
import time

import pytest

from citycard.cards.audit_reconcile import RECONCILER, reconcile
from citycard.cards.money import op_key
from citycard.domain.ops import Cancel, TopUp
from citycard.domain.purses import Purse
from tests.support.city import ApiCity, api_city

pytestmark = pytest.mark.usefixtures("ray_cluster")


async def entries(api: ApiCity, card: int, action: str) -> list[dict]:
    r = await api.http.get("/audit", headers=api.auth("auditor"), params={"subject": f"card:{card}", "limit": 1000})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e["action"] == action]


def test_a_retried_cancellation_claims_one_refund(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            card = await api.new_card(1)
            assert (await api.top_up(card, 3000, "t1")).status_code == 200
            answers = []
            for _ in range(3):  # the clerk's screen timed out twice and the clerk pressed again
                r = await api.http.post(f"/cards/{card}/cancel", headers=api.auth(),
                                        json={"reason": "moved away", "idempotency_key": "c1"})
                answers.append(r.status_code)
            assert answers == [200] * 3
            cancels = await entries(api, card, "card.cancel")
            assert len(cancels) == 1 and cancels[0]["after"]["refunded_fen"] == {"epurse": 3000}, cancels

    asyncio.run(scenario())


def test_an_op_whose_request_stopped_before_its_entry_gets_exactly_one(configured_services, schema):
    """The op applied in its shard (durable in the journal) and the request died before its
    audit insert: a retry writes the entry, and the reconciler writes it for the ops never
    retried; neither writes a second one."""
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            card, other = await api.new_card(1), await api.new_card(2)
            shards, cap_fen = api.city.platform.shard_client, api.city.settings.api.epurse_max_fen
            # the first attempts: applied, then (as if) the process died before the audit insert
            first = await shards.apply_op(TopUp(op_key("topup", card, "k1"), card, int(Purse.EPURSE), 700, cap_fen))
            assert first.result == 0 and not first.replay
            await shards.apply_op(TopUp(op_key("topup", other, "k2"), other, int(Purse.EPURSE), 900, cap_fen))
            await shards.apply_op(Cancel(op_key("cancel", other, "c2"), other))
            assert await entries(api, card, "money.top_up") == []

            r = await api.top_up(card, 700, "k1")  # the retry
            assert r.status_code == 200 and r.json()["replay"] is True and r.json()["balance"]["epurse"] == 700
            assert len(await entries(api, card, "money.top_up")) == 1
            assert (await api.top_up(card, 700, "k1")).status_code == 200  # and again: no second
            assert len(await entries(api, card, "money.top_up")) == 1

            # the API's own pool: the reconciler runs as the platform's least-privileged login
            pool, n_shards = api.city.platform.pool, api.city.settings.city.account_shards
            got = await reconcile(pool, n_shards, int(time.time() * 1000), grace_ms=0)
            assert got.written == 2, got  # other's top-up and cancellation; card's is there already
            again = await reconcile(pool, n_shards, int(time.time() * 1000), grace_ms=0)
            assert again.written == 0, again
            (top_up,) = await entries(api, other, "money.top_up")
            (cancel,) = await entries(api, other, "card.cancel")
            assert top_up["operator"] == RECONCILER and top_up["after"]["purses_fen"] == {"epurse": 900}
            assert cancel["after"]["refunded_fen"] == {"epurse": 900}
            r = await api.top_up(other, 900, "k2")  # a late retry after the reconciler: no second entry
            assert r.status_code == 200 and r.json()["replay"] is True
            assert len(await entries(api, other, "money.top_up")) == 1

    asyncio.run(scenario())


def test_a_replayed_top_up_answers_the_first_answer(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20) as api:
            card = await api.new_card(1)
            first = await api.top_up(card, 1000, "k1")
            assert (await api.top_up(card, 500, "k2")).status_code == 200
            replay = await api.top_up(card, 1000, "k1")
            assert replay.status_code == 200 and replay.json()["replay"] is True
            assert replay.json()["balance"] == first.json()["balance"] == {**replay.json()["balance"], "epurse": 1000}
            assert {k: v for k, v in replay.json().items() if k != "replay"} == \
                {k: v for k, v in first.json().items() if k != "replay"}
            r = await api.http.get(f"/cards/{card}/balance", headers=api.auth())
            assert r.json()["purses"]["epurse"] == 1500  # today's balance is where it belongs

    asyncio.run(scenario())
