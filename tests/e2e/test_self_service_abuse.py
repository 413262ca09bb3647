"""Self-service as a stranger sees it, end to end over HTTP on real Postgres, Redis and Ray:
no PIN can be locked or guessed without the holder's identity number, no answer tells whether
a card exists, failures are limited per source, per card and per token (429 + Retry-After),
and one source cannot take the PIN checks from everyone else.

Sources: the API trusts 127.0.0.1 as a reverse proxy here, so X-Forwarded-For names the
client, as it would behind the city's proxy; one test also connects from 127.0.0.2 itself.
"""

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from citycard.domain.cards import make_card_no
from tests.support.city import ApiCity, api_city

pytestmark = pytest.mark.usefixtures("ray_cluster")

PIN, OTHER = "482913", "735160"
STRANGER_ID = "11010119800101001X"  # well formed, nobody's here
BEHIND_PROXY = {"pin_kdf_n": 1024, "trusted_proxies": ["127.0.0.1/32"]}


def xff(source: str) -> dict[str, str]:
    return {"X-Forwarded-For": source}


async def set_pin(api: ApiCity, card: int, pin: str = PIN) -> None:
    r = await api.http.put(f"/cards/{card}/pin", headers=api.auth(), json={"pin": pin})
    assert r.status_code == 201, r.text


async def failed_tries(api: ApiCity, card: int) -> int:
    r = await api.http.get(f"/cards/{card}/pin", headers=api.auth("read_only"))
    assert r.status_code == 200, r.text
    return int(r.json()["failed_tries"])


def test_a_stranger_can_neither_lock_a_pin_nor_tell_which_cards_exist(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20, api=BEHIND_PROXY) as api:
            max_tries = api.city.settings.api.pin_max_tries
            card = await api.new_card(1)
            await set_pin(api, card)
            no_pin = await api.new_card(2)
            bulk = api.city.cards[0][0]  # a seeded card with no holder on file
            nobody = make_card_no(4_999_999_999)  # a valid number no card has

            # the anonymous verify of the review, walked over the card: refused before any PIN
            for i in range(2 * max_tries):
                r = await api.http.post(f"/cards/{card}/pin/verify", json={"pin": f"{100000 + i:06d}"})
                assert r.status_code == 401 and "tries_left" not in r.json(), r.text
            assert await failed_tries(api, card) == 0

            # without the identity number, every card answers the same, and no try is counted
            answers = []
            for n, target in enumerate((card, no_pin, bulk, nobody)):
                r = await api.log_in(target, OTHER, citizen_id=STRANGER_ID, headers=xff(f"198.51.100.{n}"))
                answers.append((r.status_code, r.json()))
            assert answers == [(401, {"error": "the card number, identity number or PIN is wrong"})] * 4, answers
            for n in range(3 * max_tries):  # from many addresses, as a botnet would
                await api.log_in(card, f"{200000 + n:06d}", citizen_id=STRANGER_ID, headers=xff(f"203.0.113.{n}"))
            assert await failed_tries(api, card) == 0
            r = await api.log_in(card, PIN, headers=xff("192.0.2.50"))  # the holder from elsewhere
            assert r.status_code == 429, r.text  # the card's failures are used up for now ...
            assert 1 <= int(r.headers["Retry-After"]) <= 3600 and r.json()["retry_after_s"] >= 1
            r = await api.http.get(f"/cards/{card}/pin", headers=api.auth("read_only"))
            assert r.json()["locked"] is False  # ... but nothing is locked: a wait, not a counter visit

    asyncio.run(scenario())


def test_failures_are_limited_per_source_per_card_and_per_token(configured_services, schema):
    async def scenario() -> None:
        limits = {**BEHIND_PROXY, "login_failures_per_source": "4/minute;6/hour",
                  "login_failures_per_card": "3/minute", "pin_failures_per_token": "2/minute"}
        async with api_city(configured_services, schema, n_cards=20, api=limits) as api:
            cards = [await api.new_card(i) for i in range(1, 5)]
            for c in cards:
                await set_pin(api, c)

            # per source: 4 failures over different cards, then 429 on any card, right or wrong
            for n, c in enumerate(cards):
                r = await api.log_in(c, OTHER, citizen_id=STRANGER_ID, headers=xff("198.51.100.7"))
                assert r.status_code == 401, (n, r.text)
            r = await api.log_in(cards[0], PIN, headers=xff("198.51.100.7"))
            assert r.status_code == 429 and "address" in r.json()["error"], r.text
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            r = await api.log_in(cards[0], PIN, headers=xff("198.51.100.8"))  # another source is not held back
            assert r.status_code == 201, r.text

            # per card: 3 failures (one above, two more from other sources), then 429 for that card only
            for n in range(2):
                r = await api.log_in(cards[1], OTHER, citizen_id=STRANGER_ID, headers=xff(f"203.0.113.{n}"))
                assert r.status_code == 401, r.text
            r = await api.log_in(cards[1], PIN, headers=xff("203.0.113.99"))
            assert r.status_code == 429 and "card" in r.json()["error"], r.text
            assert (await api.log_in(cards[2], PIN, headers=xff("203.0.113.99"))).status_code == 201

            # per token: the payment channel's 2 wrong PINs, then 429; the clerk's token is not held
            for c in cards[2:]:
                r = await api.http.post(f"/cards/{c}/pin/verify", headers=api.auth("payment"), json={"pin": OTHER})
                assert r.status_code == 401, r.text
            r = await api.http.post(f"/cards/{cards[0]}/pin/verify", headers=api.auth("payment"), json={"pin": PIN})
            assert r.status_code == 429 and "token" in r.json()["error"], r.text
            r = await api.http.post(f"/cards/{cards[0]}/pin/verify", headers=api.auth(), json={"pin": PIN})
            assert r.status_code == 200, r.text

            # X-Forwarded-For from a peer that is no trusted proxy is ignored: it cannot pick its source
            async with peer(api, "127.0.0.2") as other_peer:
                for n, c in enumerate(cards[2:] * 2):  # two more each: within the per-card limit
                    r = await other_peer.post("/self/session", headers=xff(f"10.9.9.{n}"), json={
                        "card_no": c, "citizen_id": STRANGER_ID, "pin": OTHER})
                    assert r.status_code == 401, r.text
                r = await other_peer.post("/self/session", headers=xff("10.9.9.200"), json={
                    "card_no": cards[0], "citizen_id": api.citizen_ids[cards[0]], "pin": PIN})
                assert r.status_code == 429 and "address" in r.json()["error"], r.text

            # the on-call engineer sees it all on /metrics
            metrics = await scrape(api)
            assert metrics[("429", "login_source")] == 2 and metrics[("429", "login_card")] == 1, metrics
            assert metrics[("429", "pin_token")] == 1 and metrics[("401", "wrong_login")] == 10, metrics
            assert metrics[("401", "wrong_pin")] == 2, metrics

    asyncio.run(scenario())


async def scrape(api: ApiCity) -> dict[tuple[str, str], float]:
    """citycard_api_refusals_total by (status, reason), from the platform's /metrics."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://127.0.0.1:{api.city.platform.metrics_port}/metrics")).text
    return {(s.labels["status"], s.labels["reason"]): s.value for family in text_string_to_metric_families(text)
            if family.name == "citycard_api_refusals" for s in family.samples if s.name.endswith("_total")}


def peer(api: ApiCity, local_address: str) -> httpx.AsyncClient:
    """A client of the same API connecting from another loopback address (a second source)."""
    return httpx.AsyncClient(base_url=str(api.http.base_url), timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=local_address))


def test_one_flooding_source_cannot_starve_the_pin_checks_of_others(configured_services, schema):
    """The review's 70 wrong-PIN checks in flight from one client filled the one global gate
    and honest holders got 503. Now one source holds at most its share of the gate."""
    async def scenario() -> None:
        # the production KDF cost, so the flood's checks really queue; the limits on failures
        # are lifted so that only the gate stands between the flood and the holder
        async with api_city(configured_services, schema, n_cards=20,
                            api={"login_failures_per_source": "100000/minute",
                                 "login_failures_per_card": "100000/minute"}) as api:
            card = await api.new_card(1)
            await set_pin(api, card)
            stop = asyncio.Event()
            codes: list[int] = []

            async def flooder(n: int) -> None:
                for i in range(200):  # bounded in count, and stopped when the holder is done
                    if stop.is_set():
                        return
                    r = await api.log_in(card, f"{300000 + n * 200 + i:06d}"[-6:], citizen_id=STRANGER_ID)
                    codes.append(r.status_code)

            flood = [asyncio.create_task(flooder(n)) for n in range(70)]
            await asyncio.sleep(0.5)
            async with peer(api, "127.0.0.2") as holder:
                answers = []
                for _ in range(5):
                    r = await holder.post("/self/session", json={
                        "card_no": card, "citizen_id": api.citizen_ids[card], "pin": PIN})
                    answers.append(r.status_code)
            stop.set()
            async with asyncio.timeout(60):
                await asyncio.gather(*flood)
            assert answers == [201] * 5, answers
            assert 503 not in codes and {401, 429} >= set(codes) and 429 in codes, sorted(set(codes))

    asyncio.run(scenario())
