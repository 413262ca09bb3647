"""Visitors' cards sold offline (issue 15 item 2; docs/clearing.md, "Visitors' cards sold
offline") on the machine's Postgres: city HZ's desk keeps another issuer's card's records once
(a resent batch is a replay; another record under a kept key is COUNTER_REUSED), answers
FORWARDED, checks no TAC and hotlists nothing, refuses a card of an issuer nobody knows; HZ's
clearing export puts the records in SH's file; the house clears them; SH's `clearing verify`
finds the forged TAC and posts a verdict (again: done already), and the record comes back as a
chargeback in the next window."""

import asyncio
import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citycard.clearing import client
from citycard.clearing.server import HouseServer
from citycard.clearing.service import HouseService
from citycard.cli.clearing import verify
from citycard.cli.services import migrate_db
from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import make_card_no
from citycard.domain.epurse_crypto import When
from citycard.domain.offline import expected_tac
from citycard.domain.settlement import window_bounds
from citycard.gateway.metrics import Metrics
from citycard.offline.desk import OfflineDesk, Refusal, issuer_keys
from citycard.persistence import clearing_export, db
from citycard.protocols.clearing_files import parse_csv
from citycard.protocols.codes import OfflineCode
from citycard.protocols.offline import items_of
from tests.support.offline import Sam
from tests.support.services import ServiceUrls, make_settings

pytestmark = [pytest.mark.services, pytest.mark.timeout(60)]

W1, W2 = "2026-12-07", "2026-12-08"
OWN, SH, STRANGER = 330100, 310000, 990000  # HZ (the shipped table's home issuer), SH, nobody's
TOKEN = "operator-token-for-tests"
HZ_KEY, SH_KEY = (Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (7, 8))
F = OfflineCode.FORWARDED


def _pub(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def test_visitor_records_forwarded_cleared_and_charged_back(configured_services: ServiceUrls, schema: str,
                                                            tmp_path: Path) -> None:
    settings = make_settings(configured_services, schema)
    tables = shipped_tables()
    assert tables.home_issuer == OWN
    offset_ms = tables.versions[-1].utc_offset_ms
    start_ms, end_ms = window_bounds(W1, offset_ms)
    sam = Sam(settings, 4242)  # SH's cards share the demo keys here: SH's verify checks with them
    when = When.of(W1.replace("-", ""), "081500")
    good = replace(sam.record(make_card_no(1, SH), 5, 300, 700, seq=1), when=when)
    good = replace(good, tac=expected_tac(sam.issuer.dtk(good.card_no), good))  # the TAC of the new date
    forged = replace(sam.record(make_card_no(2, SH), 9, 150, 50, seq=2), when=when, tac=b"\xde\xad\xbe\xef")
    unknown = replace(sam.record(make_card_no(3, STRANGER), 1, 100, 0, seq=3), when=when)
    batch = [good, forged, unknown]

    async def run() -> None:
        await migrate_db(settings, configured_services.db_url)
        pool = await db.create_pool(configured_services.db_url, schema, 2)
        desk = OfflineDesk(pool, None, schema, issuer_keys(settings), bytes.fromhex(settings.card.batch_master_key_hex),
                           Metrics(), own_issuer=OWN, visitor_issuers={SH, OWN})
        desk.start()
        house = await HouseService.open(configured_services.db_url, schema)  # beside the city's tables
        server = HouseServer(house, TOKEN)
        await server.start()
        try:
            got = await desk.upload(4242, 1, items_of(batch), sam.mac(1, batch))
            assert not isinstance(got, Refusal)
            assert got == [F, F, OfflineCode.UNKNOWN_ISSUER]
            assert await desk.upload(4242, 1, items_of(batch), sam.mac(1, batch)) == got  # a replay
            again = await desk.upload(4242, 2, items_of(batch[:2]), sam.mac(2, batch[:2]))  # resent anew
            assert again == [F, F]
            other = replace(good, amount_fen=1, terminal_seq=4)  # another record under good's key
            assert await desk.upload(4242, 3, items_of([other]), sam.mac(3, [other])) == [OfflineCode.COUNTER_REUSED]
            async with pool.acquire() as conn:
                # the records received inside W1 (the desk stamps now())
                await conn.execute("UPDATE offline_visitor_records SET received_at = $1",
                                   dt.datetime.fromtimestamp((start_ms + 3_600_000) / 1000, dt.UTC))
                kept = await conn.fetch("SELECT card_no, offline_counter, tac FROM offline_visitor_records"
                                        " ORDER BY card_no")
                assert [(r["card_no"], r["offline_counter"]) for r in kept] == [(good.card_no, 5), (forged.card_no, 9)]
                assert bytes(kept[1]["tac"]) == forged.tac
                for table in ("offline_records", "offline_cards", "hotlist", "offline_rejects"):
                    assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
                d = await clearing_export.gather(conn, "HZ", W1, start_ms, end_ms, OWN, HZ_KEY, {SH: "SH"}, offset_ms)
            assert sorted(d.files) == ["SH.csv"] and d.records == 2 and d.sum_fen == 450
            recs = parse_csv(d.files["SH.csv"], "SH.csv")
            assert [(r.kind, r.card_no, r.tac) for r in recs] == [("offline", good.card_no, good.tac),
                                                                  ("offline", forged.card_no, forged.tac)]

            base = server.url
            for city, key, prefix in (("HZ", HZ_KEY, OWN), ("SH", SH_KEY, SH)):
                status, body = await asyncio.to_thread(client.add_participant, base, TOKEN, city, _pub(key),
                                                       100_000, 0, [str(prefix)])
                assert status == 201, body
            status, body = await asyncio.to_thread(client.deliver, base, "HZ", W1, d.manifest, d.signature, d.files)
            assert status < 300 and body["accepted"] == 2, body
            assert (await asyncio.to_thread(client.close, base, TOKEN, W1))[0] < 300

            out = await asyncio.to_thread(verify, base, "SH", W1, SH_KEY, issuer_keys(settings))
            assert (out["offline"], out["rejected"], out["rejected_before"], out["failed"]) == (2, 1, 0, [])
            out = await asyncio.to_thread(verify, base, "SH", W1, SH_KEY, issuer_keys(settings))  # idempotent
            assert (out["rejected"], out["rejected_before"], out["failed"]) == (0, 1, [])

            status, r2 = await asyncio.to_thread(client.close, base, TOKEN, W2)
            assert status < 300, r2
            assert [(c["record_id"], c["acquirer"], c["issuer"]) for c in r2["charged_back"]] == [
                ("HZ:4242:2", "HZ", "SH")]
            assert sum(r2["multilateral"].values()) == 0
            assert r2["multilateral"]["HZ"] == -150  # HZ returns the forged sale to SH
        finally:
            await server.stop()
            await house.close()
            await desk.stop()
            await pool.close()

    asyncio.run(run())
