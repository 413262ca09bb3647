"""A city's poller of its clearing house (citycard/interop/house_poll.py) against the real
clearing service on the machine's Postgres: nothing suspended at first; after a window in
which A owes more than its cap closes, the poll hands the desk {A}; settled, it hands the desk
the empty set; with the house gone the last known set is kept, the failure counted and logged
once, and a poll that succeeds again updates it."""

import asyncio
import logging
from collections.abc import Iterable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from citycard.clearing.client import delivery_body
from citycard.clearing.server import HouseServer
from citycard.clearing.service import HouseService
from citycard.domain.clearing_records import ClearingRecord, record_id_of
from citycard.interop.house_poll import HousePoller, PollMetrics, parse_suspended
from citycard.protocols.clearing_files import render_csv, tally
from citycard.protocols.settlement_files import manifest, sign
from tests.support.services import ServiceUrls

pytestmark = pytest.mark.services

W1 = "2026-12-07"
TOKEN = "operator-token-for-tests"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
KEYS = {c: Ed25519PrivateKey.from_private_bytes(bytes([i + 7]) * 32) for i, c in enumerate("AB")}


def _delivery(sender: str, records: list[ClearingRecord]) -> dict[str, object]:
    files = {f"{r.issuer}.csv": render_csv([r]) for r in records}
    m = manifest(sender, W1, files, tally)
    return delivery_body(sender, W1, m, sign(KEYS[sender], m), files)


class Desk:
    """What the poller calls: a RemoteDesk's set_suspended, recorded."""

    def __init__(self) -> None:
        self.calls: list[frozenset[str]] = []

    def set_suspended(self, codes: Iterable[str]) -> frozenset[str]:
        self.calls.append(frozenset(codes))
        return self.calls[-1]


def test_parse_suspended_refuses_what_is_not_a_list_of_codes() -> None:
    assert parse_suspended({"suspended": ["A", "B"]}) == ["A", "B"]
    for bad in ({}, {"suspended": "A"}, {"suspended": [1]}, ["A"], {"suspended": ["A"] * 10_001}):
        with pytest.raises(ValueError):
            parse_suspended(bad)


def test_poller_against_the_clearing_service(configured_services: ServiceUrls, schema: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        house = await HouseService.open(configured_services.db_url, schema)
        server = HouseServer(house, TOKEN)
        await server.start()
        desk, registry = Desk(), CollectorRegistry()
        poller = HousePoller(server.url, 100, 500, desk.set_suspended, PollMetrics(registry))
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                for city, cap in (("A", 100), ("B", 100)):
                    r = await c.post("/participants", headers=ADMIN, json={
                        "city": city, "public_key_hex": KEYS[city].public_key().public_bytes_raw().hex(),
                        "net_debit_cap_fen": cap, "rate_bp": 0})
                    assert r.status_code == 201, r.text
                assert await poller.poll_once()
                assert desk.calls == [frozenset()]
                assert registry.get_sample_value("citycard_house_poll_last_ok_timestamp_seconds") > 0

                # B acquires an A card for 500 fen: A owes 500, over its cap of 100
                rec = ClearingRecord(record_id_of("B", 1001, 1), "A", "B", 3100000000042, 500, "online", W1, 1001, 1,
                                     "20261207081500")
                assert (await c.post("/deliveries", json=_delivery("B", [rec]))).json()["accepted"] == 1
                assert (await c.post(f"/windows/{W1}/close", headers=ADMIN)).status_code == 200
                poller.start()  # now on its own, every 100 ms
                await _until(lambda: desk.calls[-1] == {"A"})
                assert registry.get_sample_value("citycard_house_suspended_issuers") == 1

                assert (await c.post(f"/windows/{W1}/settled/A", headers=ADMIN)).status_code == 200
                await _until(lambda: desk.calls[-1] == frozenset())
            await poller.stop()

            # the house gone: the last known set is kept, the failures counted, logged once
            await server.stop()
            await house.close()
            n_calls = len(desk.calls)
            with caplog.at_level(logging.WARNING, logger="citycard.interop.house_poll"):
                assert not await poller.poll_once()
                assert not await poller.poll_once()
            assert len(desk.calls) == n_calls and poller.last == frozenset()
            assert registry.get_sample_value("citycard_house_poll_failures_total") == 2
            assert len([r for r in caplog.records if "keeping the last known" in r.message]) == 1
        finally:
            await poller.stop()
            await server.stop()
            await house.close()

    asyncio.run(run())


async def _until(cond: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.02)
