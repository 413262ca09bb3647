"""The clearing house as a service on the machine's Postgres (docs/clearing.md, "The
clearing house service"): three cities register, deliver over a real socket, each refusal
(unknown sender, forged signature, wrong sum, duplicate) is answered with its code and
changes nothing, a window closes to positions summing to 0, a restarted house (a new
instance on the same schema, replaying its events) gives the same report and still refuses
a duplicate, and an issuer's verdict comes back as a chargeback in the next window. Then a
city's side: its cross-city records (offline sales of visitors' cards, online taps their
issuers decided or confirmed) exported, signed and sent by the CLI, its books equal to the
house's."""

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citycard.clearing import client
from citycard.clearing.app import create_app
from citycard.clearing.client import delivery_body, verdict_body
from citycard.clearing.server import HouseServer
from citycard.clearing.service import HouseService
from citycard.cli.main import main
from citycard.cli.services import Services, connect_app, migrate_db
from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import make_card_no
from citycard.domain.clearing_records import ClearingRecord, record_id_of
from citycard.domain.settlement import window_bounds
from citycard.errors import CityCardError
from citycard.persistence import clearing_export
from citycard.persistence.settlement_export import load_or_make_key
from citycard.protocols.clearing_files import parse_csv, render_csv, tally
from citycard.protocols.settlement_files import check_delivery, manifest, sign
from tests.support.cli import citycard_env
from tests.support.services import ServiceUrls, make_settings

pytestmark = pytest.mark.services

W1, W2 = "2026-12-07", "2026-12-08"
TOKEN = "operator-token-for-tests"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
RATES = {"A": 100, "B": 50, "C": 0}
CAPS = {"A": 10_000, "B": 10_000, "C": 0}  # C is over its cap as soon as it owes anything
KEYS = {c: Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i, c in enumerate(RATES)}


def _pub(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _rec(acq: str, iss: str, seq: int, amount: int, window: str = W1) -> ClearingRecord:
    return ClearingRecord(record_id_of(acq, 1001, seq), iss, acq, 3100000000042 + seq, amount, "online", window,
                          1001, seq, window.replace("-", "") + "081500")


def _files(records: list[ClearingRecord]) -> dict[str, bytes]:
    by: dict[str, list[ClearingRecord]] = {}
    for r in records:
        by.setdefault(r.issuer, []).append(r)
    return {f"{iss}.csv": render_csv(rs) for iss, rs in by.items()}


def _body(sender: str, window: str, records: list[ClearingRecord], key: Ed25519PrivateKey | None = None,
          edit: Any = None) -> dict[str, Any]:
    files = _files(records)
    m = manifest(sender, window, files, tally)
    if edit is not None:  # re-signed after the change: only the counts can catch it
        body = json.loads(m)
        edit(body)
        m = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return delivery_body(sender, window, m, sign(key or KEYS[sender], m), files)


# The worked example of docs/clearing.md: B acquires A's cards for 1000 + 250 and a C card
# for 999; A acquires a B card for 401 (and a card of Q, no participant: rejected inside).
B_W1 = [_rec("B", "A", 1, 1000), _rec("B", "A", 2, 250), _rec("B", "C", 3, 999)]
A_W1 = [_rec("A", "B", 1, 401), _rec("A", "Q", 2, 77)]


def _expected_positions(sales: list[ClearingRecord]) -> dict[str, int]:
    """Positions by the rule, recomputed here: per (issuer, acquirer) pair the gross less the
    issuer's fee on it, rounded down."""
    pairs: dict[tuple[str, str], int] = {}
    for r in sales:
        if r.issuer in RATES:
            pairs[(r.issuer, r.acquirer)] = pairs.get((r.issuer, r.acquirer), 0) + r.amount_fen
    pos = dict.fromkeys(RATES, 0)
    for (iss, acq), gross in pairs.items():
        net = gross - gross * RATES[iss] // 10_000
        pos[iss] -= net
        pos[acq] += net
    return pos


async def _state(c: httpx.AsyncClient, conn: asyncpg.Connection) -> Any:
    """What a refusal must not change: every statement and the accepted events."""
    got = []
    for w in (W1, W2):
        for city in RATES:
            r = await c.get(f"/windows/{w}/statements/{city}")
            got.append((r.status_code, r.json()))
    got.append(await conn.fetchval("SELECT count(*) FROM house_deliveries WHERE code = 0"))
    got.append(await conn.fetchval("SELECT count(*) FROM house_delivery_files"))
    got.append(await conn.fetchval("SELECT count(*) FROM house_verdicts WHERE code = 0"))
    return got


async def _refused(c: httpx.AsyncClient, conn: asyncpg.Connection, path: str, body: dict[str, Any],
                   status: int, code: str) -> dict[str, Any]:
    before = await _state(c, conn)
    r = await c.post(path, json=body)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.json()["reason"]
    assert await _state(c, conn) == before
    return dict(r.json())


async def _serve(urls: ServiceUrls, schema: str) -> tuple[HouseService, HouseServer]:
    house = await HouseService.open(urls.db_url, schema)
    server = HouseServer(house, TOKEN)
    await server.start()
    return house, server


async def _stop(house: HouseService, server: HouseServer) -> None:
    await server.stop()
    await house.close()


def test_house_over_http(configured_services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        urls = configured_services
        house, server = await _serve(urls, schema)
        conn = await asyncpg.connect(urls.db_url, server_settings={"search_path": schema})
        c = httpx.AsyncClient(base_url=server.url, timeout=30)
        try:
            assert (await c.get("/health")).json()["participants"] == 0
            p = {"city": "A", "public_key_hex": _pub(KEYS["A"]), "net_debit_cap_fen": 1, "rate_bp": 1}
            assert (await c.post("/participants", json=p)).status_code == 401  # no operator token
            for city, rate in RATES.items():
                r = await c.post("/participants", headers=ADMIN, json={
                    "city": city, "public_key_hex": _pub(KEYS[city]), "net_debit_cap_fen": CAPS[city], "rate_bp": rate})
                assert r.status_code == 201, r.text
            r = await c.post("/participants", headers=ADMIN, json={**p, "city": "A"})
            assert (r.status_code, r.json()["code"]) == (409, "DUPLICATE_PARTICIPANT")
            assert (await c.post("/participants", headers=ADMIN, json={**p, "rate_bp": 10_001})).status_code == 422

            # Refusals before B's good delivery: each answered with its code, nothing changed.
            stranger = Ed25519PrivateKey.generate()
            z = [ClearingRecord("Z:1001:1", "A", "Z", 3100000000042, 5, "online", W1, 1001, 1, "20261207081500")]
            await _refused(c, conn, "/deliveries", _body("Z", W1, z, stranger), 422, "UNKNOWN_SENDER")
            await _refused(c, conn, "/deliveries", _body("B", W1, B_W1, KEYS["C"]), 422, "BAD_SIGNATURE")

            def more(body: dict[str, Any]) -> None:
                body["files"][0]["sum_fen"] += 1

            wrong = await _refused(c, conn, "/deliveries", _body("B", W1, B_W1, edit=more), 422, "BAD_MANIFEST")
            assert "the manifest says" in wrong["reason"]
            bad_file = _body("B", W1, B_W1)
            bad_file["files_b64"]["A.csv"] = bad_file["files_b64"]["C.csv"]  # a file changed after signing
            await _refused(c, conn, "/deliveries", bad_file, 422, "BAD_MANIFEST")
            assert await conn.fetchval("SELECT count(*) FROM house_deliveries WHERE code <> 0") == 4

            r = await c.post("/deliveries", json=_body("B", W1, B_W1))
            assert (r.status_code, r.json()["accepted"], r.json()["rejected"]) == (200, 3, [])
            r = await c.post("/deliveries", json=_body("A", W1, A_W1))
            assert r.json()["accepted"] == 1
            assert [(x["record_id"], x["code"]) for x in r.json()["rejected"]] == [("A:1001:2", "UNKNOWN_ISSUER")]
            assert (await c.post("/deliveries", json=_body("C", W1, []))).json()["accepted"] == 0
            await _refused(c, conn, "/deliveries", _body("B", W1, B_W1), 409, "DUPLICATE_FILE")
            provisional = (await c.get(f"/windows/{W1}/statements/B")).json()
            assert provisional["final"] is False and provisional["receivable_gross_fen"] == 2249
            assert (await c.get(f"/windows/{W1}/report")).json()["code"] == "WINDOW_OPEN"

            # A rejects B's record of its card (a TAC that does not check): only A, once, signed.
            rid = "B:1001:2"
            await _refused(c, conn, "/verdicts", {**verdict_body(KEYS["B"], "A", rid, "bad TAC")}, 422, "BAD_SIGNATURE")
            await _refused(c, conn, "/verdicts", verdict_body(KEYS["B"], "B", rid, "bad TAC"), 422, "NOT_ISSUER")
            await _refused(c, conn, "/verdicts", verdict_body(KEYS["A"], "A", "B:9:9", "bad TAC"), 422,
                           "UNKNOWN_RECORD")
            assert (await c.post("/verdicts", json=verdict_body(KEYS["A"], "A", rid, "bad TAC"))).status_code == 200
            await _refused(c, conn, "/verdicts", verdict_body(KEYS["A"], "A", rid, "bad TAC"), 409,
                           "DUPLICATE_CHARGEBACK")

            assert (await c.post(f"/windows/{W1}/close")).status_code == 401
            closed = (await c.post(f"/windows/{W1}/close", headers=ADMIN)).json()
            assert closed["multilateral"] == _expected_positions(B_W1 + A_W1) == {"A": -839, "B": 1838, "C": -999}
            assert sum(closed["multilateral"].values()) == 0
            assert closed["charged_back"] == [] and closed["suspended"] == ["C"]
            assert (await c.post(f"/windows/{W1}/close", headers=ADMIN)).json() == closed  # idempotent
            assert (await c.get(f"/windows/{W1}/report")).json() == closed
            await _refused(c, conn, "/deliveries", _body("C", W1, []), 409, "WINDOW_CLOSED")
            assert (await c.get("/suspended")).json()["suspended"] == ["C"]
            w2 = [_rec("B", "A", 10, 500, W2)]
            assert (await c.post("/deliveries", json=_body("B", W2, w2))).json()["accepted"] == 1
            with pytest.raises(CityCardError, match="another clearing house"):
                await HouseService.open(urls.db_url, schema)  # one house per schema

            # Restart: a new instance replays the events.
            await c.aclose()
            await _stop(house, server)
            house, server = await _serve(urls, schema)
            c = httpx.AsyncClient(base_url=server.url, timeout=30)
            assert house.replayed == (await c.get("/health")).json()["replayed_events"] > 0
            assert (await c.get(f"/windows/{W1}/report")).json() == closed
            assert (await c.get("/suspended")).json()["suspended"] == ["C"]
            await _refused(c, conn, "/deliveries", _body("B", W2, w2), 409, "DUPLICATE_FILE")
            # Each issuer fetches what was cleared against its cards (to check TACs), with its signature.
            for issuer, want in (("A", ["B:1001:1", "B:1001:2"]), ("C", ["B:1001:3"]), ("B", ["A:1001:1"])):
                status, csv_bytes = await asyncio.to_thread(client.records, server.url, KEYS[issuer], issuer, W1)
                assert status == 200 and [r.record_id for r in parse_csv(csv_bytes, "x")] == want
            forged = await asyncio.to_thread(client.records, server.url, KEYS["B"], "A", W1)
            assert forged[0] == 422 and json.loads(forged[1])["code"] == "BAD_SIGNATURE"
            await _refused(c, conn, "/verdicts", verdict_body(KEYS["A"], "A", rid, "bad TAC"), 409,
                           "DUPLICATE_CHARGEBACK")
            r = await c.post(f"/windows/{W1}/settled/C", headers=ADMIN)
            assert r.status_code == 200 and (await c.get("/suspended")).json()["suspended"] == []

            # The chargeback lands in the next window closed: B returns 250 less A's fee on it.
            r2 = (await c.post(f"/windows/{W2}/close", headers=ADMIN)).json()
            back = 250 - 250 * RATES["A"] // 10_000
            assert [(x["record_id"], x["reason"]) for x in r2["charged_back"]] == [(rid, "bad TAC")]
            assert r2["statements"]["A"]["chargebacks_received_fen"] == back
            assert r2["statements"]["B"]["chargebacks_paid_fen"] == back
            assert r2["multilateral"]["B"] == _expected_positions(w2)["B"] - back
            assert sum(r2["multilateral"].values()) == 0
        finally:
            await c.aclose()
            await conn.close()
            await _stop(house, server)

        # A third instance (over ASGI, no socket): the settled mark and the chargeback replayed too.
        house = await HouseService.open(urls.db_url, schema)
        try:
            transport = httpx.ASGITransport(app=create_app(house, TOKEN), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://house") as c3:
                assert (await c3.get("/suspended")).json()["suspended"] == []
                assert (await c3.get(f"/windows/{W2}/report")).json() == r2
                assert (await c3.get("/windows/2026-13-01/report")).json()["code"] == "WRONG_WINDOW"
                big = await c3.post("/deliveries", content=b"x" * (64 * 2**20 + 1))
                assert big.status_code == 413
                # The event row cannot be written after the core closed the window: the core is
                # rebuilt from what was committed, so the close never happened.
                w3 = "2026-12-09"
                async with house.pool.acquire() as conn3:
                    await conn3.execute(f"ALTER TABLE house_closes ADD CONSTRAINT not_w3 CHECK (window_name <> '{w3}')")
                r = await c3.post(f"/windows/{w3}/close", headers=ADMIN)
                assert (r.status_code, r.json()["code"]) == (500, "INTERNAL")
                assert (await c3.get(f"/windows/{w3}/report")).json()["code"] == "UNKNOWN_WINDOW"
                assert (await c3.get(f"/windows/{W2}/report")).json() == r2
        finally:
            await house.close()

    asyncio.run(run())


OWN = 330100  # the shipped fare table's home issuer
SH, NB = 310000, 330200


def test_city_exports_and_sends_clearing(configured_services: ServiceUrls, schema: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tables = shipped_tables()
    assert tables.home_issuer == OWN
    start_ms, _ = window_bounds(W1, tables.versions[-1].utc_offset_ms)
    inside = dt.datetime.fromtimestamp((start_ms + 3_600_000) / 1000, dt.UTC)
    after = dt.datetime.fromtimestamp((start_ms + 86_400_000 + 60_000) / 1000, dt.UTC)  # the next window
    # (card, counter, amount, terminal, seq, tx_when, received_at)
    rows = [
        (make_card_no(1, SH), 1, 300, 11, 1, 20261207090000, inside),
        (make_card_no(2, SH), 1, 450, 11, 2, 20261206235959, inside),  # an upload a day late: clears here
        (make_card_no(3, NB), 1, 120, 12, 1, 20261207100000, inside),
        (make_card_no(4, OWN), 1, 999, 11, 3, 20261207100000, inside),  # a home card: not cleared
        (make_card_no(5, SH), 1, 0, 11, 4, 20261207100000, inside),  # no money
        (make_card_no(6, SH), 1, 77, 11, 5, 20261208100000, inside),  # dated after the window: held back
        (make_card_no(7, SH), 1, 88, 11, 6, 20261207100000, after),  # received the next day
    ]
    t_in, t_next = start_ms + 7_200_000, start_ms + 86_400_000 + 60_000
    # (issuer, terminal, seq, card, result, fare, answered_ms): the link's answers (docs/interop.md 5.6)
    remote = [
        ("SH", 21, 1, make_card_no(8, SH), 0, 200, t_in),
        ("SH", 21, 3, make_card_no(8, SH), 4, 0, t_in),  # refused by its issuer: nothing owed
        ("SH", 21, 4, make_card_no(8, SH), 0, 90, t_next),  # answered the next day
        ("SH", 11, 1, make_card_no(9, SH), 0, 60, t_in),  # the id of the offline record HZ:11:1
    ]
    # (issuer, terminal, seq, card, amount, state, decided_ms): stand-in approvals
    standin = [
        ("SH", 21, 2, make_card_no(8, SH), 150, "confirmed", t_in),
        ("SH", 21, 1, make_card_no(8, SH), 200, "confirmed", t_in),  # answered online too: once
        ("SH", 21, 5, make_card_no(8, SH), 70, "pending", None),  # the city's risk, not cleared
        ("SH", 21, 6, make_card_no(8, SH), 80, "declined", t_in),
    ]
    env = citycard_env(configured_services, schema, CITYCARD_STATE_DIR=str(tmp_path / "state"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CITYCARD_CONFIG", raising=False)

    async def run() -> None:
        settings = make_settings(configured_services, schema)
        await migrate_db(settings, configured_services.db_url)
        conn = await connect_app(settings, Services(configured_services.db_url, configured_services.redis_url))
        try:
            await conn.executemany(
                "INSERT INTO offline_records (card_no, offline_counter, amount_fen, balance_after_fen, tx_type,"
                " terminal_id, terminal_seq, tx_when, tac, kind, route, code, batch_seq, received_at)"
                " VALUES ($1, $2, $3, 0, 9, $4, $5, $6, '\\x01020304'::bytea, 1, 5, 0, 1, $7)", rows)
            await conn.executemany(
                "INSERT INTO remote_taps (issuer, terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen,"
                " result, fare_fen, balance_fen, replay, answered_ms) VALUES ($1, $2, $3, $4, 1, 5, $8, $6, $5, $6,"
                " 0, false, $7)", [(*r, start_ms + 3_600_000) for r in remote])
            await conn.executemany(
                "INSERT INTO standin_taps (issuer, terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen,"
                " state, code, approved_ms, decided_ms) VALUES ($1, $2, $3, $4, 1, 5, $8, $5, $6, 0, $8, $7)",
                [(*r, start_ms + 3_600_000) for r in standin])
        finally:
            await conn.close()
        key = load_or_make_key(tmp_path / "state" / "settlement_ed25519.pem")
        house = await HouseService.open(configured_services.db_url, schema)  # beside the city's tables
        server = HouseServer(house, TOKEN)
        await server.start()
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        admin = ["--url", server.url, "--admin-token-file", str(token_file)]
        try:
            for city, prefix in (("HZ", OWN), ("SH", SH), (str(NB), NB)):
                pub = _pub(key) if city == "HZ" else _pub(Ed25519PrivateKey.generate())
                assert await asyncio.to_thread(main, ["clearing", "participant", "add", city, "--public-key", pub,
                                                      "--cap-fen", "100000", "--rate-bp", "30", "--prefix",
                                                      str(prefix), *admin]) == 0
            assert await asyncio.to_thread(main, ["clearing", "participant", "add", "SH", "--public-key", _pub(key),
                                                  "--cap-fen", "1", "--rate-bp", "1", *admin]) == 2  # twice
            out = tmp_path / "files"
            assert await asyncio.to_thread(main, ["settle", "export-clearing", "--window", W1, "--out", str(out),
                                                  "--city", "HZ", "--issuer-code", f"{SH}=SH"]) == 0
            files = {p.name: p.read_bytes() for p in (out / W1).glob("*.csv")}
            assert sorted(files) == [f"{NB}.csv", "SH.csv"]
            body = check_delivery(key.public_key(), (out / W1 / "manifest.json").read_bytes(),
                                  (out / W1 / "manifest.sig").read_bytes(), files, tally)
            assert body["sender"] == "HZ"
            recs = {r.record_id: r for name in files for r in parse_csv(files[name], name)}
            assert sorted(recs) == ["HZ:11:1", "HZ:11:2", "HZ:12:1", "HZ:21:1", "HZ:21:2"]
            assert recs["HZ:11:2"].issuer == "SH" and recs["HZ:12:1"].issuer == str(NB)
            assert recs["HZ:11:2"].tac == bytes([1, 2, 3, 4]) and recs["HZ:11:2"].kind == "offline"
            assert [(recs[k].kind, recs[k].amount_fen) for k in ("HZ:11:1", "HZ:21:1", "HZ:21:2")] == [
                ("online", 60), ("online", 200), ("online", 150)]

            capsys.readouterr()
            assert await asyncio.to_thread(main, ["settle", "send-clearing", "--window", W1, "--to", server.url,
                                                  "--city", "HZ", "--issuer-code", f"{SH}=SH", "--json"]) == 0
            sent = json.loads(capsys.readouterr().out)
            total = 60 + 450 + 120 + 200 + 150
            assert (sent["records"], sent["house"]["accepted"], sent["sum_fen"]) == (5, 5, total)
            assert sent["books"] == {"cleared_fen": total, "house_receivable_gross_fen": total, "equal": True}
            assert await asyncio.to_thread(main, ["settle", "send-clearing", "--window", W1, "--to", server.url,
                                                  "--city", "HZ", "--issuer-code", f"{SH}=SH"]) == 2  # duplicate
            assert await asyncio.to_thread(main, ["clearing", "close", "--window", W1, *admin]) == 0
            assert await asyncio.to_thread(main, ["clearing", "report", "--window", W1, "--url", server.url]) == 0
            assert await asyncio.to_thread(main, ["clearing", "settled", "HZ", "--window", W1, *admin]) == 0
            assert await asyncio.to_thread(main, ["clearing", "settled", "HZ", "--window", W2, *admin]) == 2
            report = await house.report(W1)
            assert report is not None and report.records == 5
            assert report.statements["HZ"].receivable_gross_fen == total
            assert report.statements["SH"].payable_gross_fen == total - 120
            assert sum(report.multilateral.values()) == 0
            d = await _gather(configured_services, schema, key)
            assert [h.split(":")[:3] for h in d.held_back] == [["HZ", "11", "5"], ["HZ", "11", "1"]]
        finally:
            await _stop(house, server)

    asyncio.run(run())


async def _gather(urls: ServiceUrls, schema: str, key: Ed25519PrivateKey) -> clearing_export.ClearingDelivery:
    conn = await asyncpg.connect(urls.db_url, server_settings={"search_path": schema})
    try:
        tables = shipped_tables()
        start_ms, end_ms = window_bounds(W1, tables.versions[-1].utc_offset_ms)
        return await clearing_export.gather(conn, "HZ", W1, start_ms, end_ms, OWN, key, {SH: "SH"},
                                            tables.versions[-1].utc_offset_ms)
    finally:
        await conn.close()
