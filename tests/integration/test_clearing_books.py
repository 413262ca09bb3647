"""The region in a city's own books, on the machine's Postgres (docs/settlement.md "Visitors",
docs/clearing.md "The city's books"): city HZ's operator is paid for visitors' rides (online,
stand-in, offline; the lines keep them apart; the settlement files still check); a record its
terminal dated after the day it arrived goes out with the window of its date, once; and the
house's closed reports are imported into HZ's tables (statement, a chargeback as HZ's loss line
with its reason and the operator it paid, the issuer side against HZ's journal), idempotently,
without changing what the operator is owed."""

import asyncio
import datetime as dt
import json
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citycard.clearing import client
from citycard.clearing.server import HouseServer
from citycard.clearing.service import HouseService
from citycard.cli.main import main
from citycard.cli.services import Services, connect_app, migrate_db
from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import make_card_no
from citycard.domain.clearing_records import ClearingRecord
from citycard.domain.settlement import SettleCode, window_bounds
from citycard.interop.store import remote_terminal_id
from citycard.persistence import clearing_books, clearing_export
from citycard.persistence import settlement as store
from citycard.persistence.settlement_export import file_rows, load_or_make_key, write_delivery
from citycard.protocols.settlement_files import check_delivery
from tests.support.cli import citycard_env
from tests.support.services import ServiceUrls, make_settings

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

W1, W2, W3 = "2026-12-07", "2026-12-08", "2026-12-09"
OWN, SH = 330100, 310000
TOKEN = "operator-token-for-tests"
SH_KEY = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
TABLES = shipped_tables()
OFFSET_MS = TABLES.versions[-1].utc_offset_ms
B1, B2, B3 = (window_bounds(w, OFFSET_MS) for w in (W1, W2, W3))
RATES = {"HZ": 30, "SH": 100}


def figures_json(statement: object) -> dict[str, int]:
    return {k: getattr(statement, k) for k in clearing_books.FIGURES}


def _pub(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


# offline sales of SH's cards on HZ's terminal 11: (counter, amount, seq, tx_when, received_ms, batch)
OFFLINE = [
    (1, 300, 1, 20261207090000, B1[0] + 3_600_000, 1),
    (2, 450, 2, 20261208010000, B1[0] + 7_200_000, 1),  # the validator's clock a day ahead: W2's
    (3, 120, 3, 20261208100000, B2[0] + 3_600_000, 2),
]
# SH's cards online on HZ's terminals: (terminal, seq, result, fare, tap_time_ms, answered_ms)
REMOTE = [
    (21, 1, 0, 200, B1[0] + 3_600_000, B1[0] + 3_600_100),
    (21, 2, 0, 90, B2[0] + 600_000, B1[1] - 60_000),  # the terminal's clock ahead: cleared in W2
    (99, 1, 0, 60, B1[0] + 3_600_000, B1[0] + 3_600_100),  # a terminal attached to nobody
]
# stand-in approvals: (terminal, seq, amount, state, approved_ms, decided_ms)
STANDIN = [
    (21, 3, 150, "confirmed", B1[0] + 4_000_000, B1[0] + 5_000_000),
    (21, 4, 80, "declined", B1[0] + 4_000_000, B1[0] + 5_000_000),  # HZ's loss; bus-a is paid anyway
]
REMOTE_TID = remote_terminal_id(0, 5)  # HZ as issuer: SH's terminal 5 on HZ's shards


async def _seed(conn: asyncpg.Connection) -> None:
    await conn.executemany(
        "INSERT INTO offline_visitor_records (card_no, offline_counter, amount_fen, balance_after_fen, tx_type,"
        " terminal_id, terminal_seq, tx_when, tac, kind, route, batch_seq, received_at)"
        " VALUES ($1, $2, $3, 0, 9, 11, $4, $5, '\\x01020304'::bytea, 1, 5, $6, $7)",
        [(make_card_no(c, SH), c, fen, seq, when, batch, _ts(rcv)) for c, fen, seq, when, rcv, batch in OFFLINE])
    await conn.executemany("INSERT INTO offline_batches (terminal_id, batch_seq, mac, codes) VALUES (11, $1, '', $2)",
                           [(1, [7, 7]), (2, [7, 7])])  # batch 2: two forwarded, one kept
    await conn.executemany(
        "INSERT INTO remote_taps (issuer, terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen, result,"
        " fare_fen, balance_fen, replay, answered_ms) VALUES ('SH', $1, $2, $3, 1, 5, $4, $5, $6, $5, 0, false, $7)",
        [(t, s, make_card_no(40 + s, SH), tap, fare, res, ans) for t, s, res, fare, tap, ans in REMOTE])
    await conn.executemany(
        "INSERT INTO standin_taps (issuer, terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen, state,"
        " code, approved_ms, decided_ms) VALUES ('SH', $1, $2, $3, 1, 5, $5, $4, $6, 0, $5, $7)",
        [(t, s, make_card_no(50 + s, SH), fen, app, st, dec) for t, s, fen, st, app, dec in STANDIN])
    # a void (a tap sent, unanswered, refused in stand-in): no ride, the operator is not paid for it
    await conn.execute(
        "INSERT INTO standin_taps (issuer, terminal_id, seq, card_no, kind, route, tap_time_ms, amount_fen, state,"
        " approved_ms, refused_code) VALUES ('SH', 21, 5, $1, 1, 5, $2, 70, 'voided', $2, 14)",
        make_card_no(55, SH), B1[0] + 4_000_000)
    # HZ as issuer: SH's link has slot 0; its tap of HZ's card charged 333 fen on HZ's journal
    await conn.execute("INSERT INTO interop_acquirers (code, slot, first_ms) VALUES ('SH', 0, 0)")
    await conn.execute(
        "INSERT INTO journal (shard_id, lsn, terminal_id, seq, card_no, kind, route, tap_time_ms, applied_ms, result,"
        " amount_fen, balance_after_fen, fare_version, op_key) VALUES (0, 1, $1, 7, $2, 1, 5, $3, $3, 0, 333, 0, 1,"
        " NULL)", REMOTE_TID, make_card_no(1, OWN), B1[0] + 1_000)
    assert await store.add_counterparty(conn, "bus-a", "operator", "Bus A", 150) == SettleCode.OK
    assert (await store.attach(conn, "bus-a", [11, 21]))[0] == SettleCode.OK


async def _gather(conn: asyncpg.Connection, window: str, bounds: tuple[int, int],
                  key: Ed25519PrivateKey) -> clearing_export.ClearingDelivery:
    return await clearing_export.gather(conn, "HZ", window, *bounds, OWN, key, {SH: "SH"}, OFFSET_MS)


def test_visitors_paid_held_back_sent_once_and_books_imported(configured_services: ServiceUrls, schema: str,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    env = citycard_env(configured_services, schema, CITYCARD_STATE_DIR=str(tmp_path / "state"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CITYCARD_CONFIG", raising=False)
    key = load_or_make_key(tmp_path / "state" / "settlement_ed25519.pem")
    city = ["--city", "HZ", "--issuer-code", f"{SH}=SH"]

    async def run() -> None:
        settings = make_settings(configured_services, schema)
        await migrate_db(settings, configured_services.db_url)
        conn = await connect_app(settings, Services(configured_services.db_url, configured_services.redis_url))
        house = await HouseService.open(configured_services.db_url, schema)  # beside the city's tables
        server = HouseServer(house, TOKEN)
        await server.start()
        base = server.url
        try:
            await _seed(conn)
            # -- the operator is paid for visitors' rides, kept apart in the line ----------
            closing = await store.close_window(conn, TABLES, W1, *B1, B1[1] + 3_600_000, OFFSET_MS)
            (line,) = closing.lines
            assert (line.visitor_online_fen, line.visitor_offline_fen) == (200 + 90 + 150 + 80, 300 + 450)
            assert (line.online_fen, line.offline_fen) == (520, 750) and line.gross_fen == 1270
            assert line.taps == 6 and line.commission_fen == 1270 * 150 // 10_000
            found = {(d.what, d.terminal_id) for d in closing.discrepancies}
            assert found == {("unattributed", 99)}  # HZ's own card charged at SH (terminal >= 2^30) is not
            rows = await file_rows(conn, *B1, OFFSET_MS)
            where = write_delivery(tmp_path / "files", "HZ", closing, rows, key)
            check_delivery(key.public_key(), (where / "manifest.json").read_bytes(),
                           (where / "manifest.sig").read_bytes(), {p.name: p.read_bytes() for p in where.glob("*.csv")})
            w2 = await store.close_window(conn, TABLES, W2, *B2, B2[1] + 3_600_000, OFFSET_MS)
            assert [(d.what, d.expected_count, d.found_count) for d in w2.discrepancies] == [
                ("offline_batch_count", 2, 1)]

            # -- a record dated after the day it arrived goes out with its date's window, once
            d1, d2, d3 = [await _gather(conn, w, b, key) for w, b in ((W1, B1), (W2, B2), (W3, B3))]
            ids = [sorted(r.split(",")[0] for f in d.files.values() for r in f.decode().splitlines()[1:])
                   for d in (d1, d2, d3)]
            assert ids == [["HZ:11:1", "HZ:21:1", "HZ:21:3", "HZ:99:1"], ["HZ:11:2", "HZ:11:3", "HZ:21:2"], []]
            assert sorted(h.split(":")[1] + ":" + h.split(":")[2] for h in d1.held_back) == ["11:2", "21:2"]
            assert (await _gather(conn, W1, B1, key)).manifest == d1.manifest  # the same bytes again
            assert d2.held_back == []

            # -- the house clears W1 and W2; SH rejects HZ:11:1 after W1 closed -------------
            for c, prefix, k in (("HZ", OWN, key), ("SH", SH, SH_KEY)):
                status, body = await asyncio.to_thread(client.add_participant, base, TOKEN, c, _pub(k), 10**9,
                                                       RATES[c], [str(prefix)])
                assert status == 201, body
            assert await asyncio.to_thread(main, ["settle", "send-clearing", "--window", W1, "--to", base,
                                                  *city]) == 0
            sh = [ClearingRecord(f"SH:5:{s}", "HZ", "SH", make_card_no(s - 6, OWN), fen, "online", W1, 5, s,
                                 "20261207081500") for s, fen in ((7, 333), (8, 44))]  # HZ never charged SH:5:8
            d_sh = clearing_export.build("SH", W1, sh, SH_KEY)
            status, body = await asyncio.to_thread(client.deliver, base, "SH", W1, d_sh.manifest, d_sh.signature,
                                                   d_sh.files)
            assert status == 200 and body["accepted"] == 2, body
            assert (await asyncio.to_thread(client.close, base, TOKEN, W1))[0] == 200
            status, body = await asyncio.to_thread(client.verdict, base, SH_KEY, "SH", "HZ:11:1", "bad TAC")
            assert status == 200, body
            assert await asyncio.to_thread(main, ["settle", "send-clearing", "--window", W2, "--to", base,
                                                  *city]) == 0
            assert (await asyncio.to_thread(client.close, base, TOKEN, W2))[0] == 200

            # -- imported into HZ's books, idempotently -----------------------------------
            lines_before = (await store.show(conn, W1)).lines
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["settle", "import-clearing", "--window", W1, "--house", base,
                                                  *city, "--json"]) == 0
            i1 = json.loads(capsys.readouterr().out)
            assert i1["code"] == "OK" and i1["chargebacks"] == []
            sent1 = 300 + 200 + 150 + 60
            assert (i1["sent_records"], i1["sent_fen"]) == (4, sent1)
            assert i1["statement"]["receivable_gross_fen"] == sent1
            assert i1["statement"]["payable_gross_fen"] == 333 + 44
            assert i1["statement"]["net_fen"] == (sent1 - sent1 * RATES["SH"] // 10_000) - (377 - 377 * 30 // 10_000) == 327
            assert [(x["what"], x["record_id"]) for x in i1["discrepancies"]] == [("issuer_not_charged", "SH:5:8")]
            counts = [await conn.fetchval(f"SELECT count(*) FROM {t}") for t in
                      ("clearing_books", "clearing_chargebacks", "clearing_discrepancies")]
            assert await asyncio.to_thread(main, ["settle", "import-clearing", "--window", W1, "--house", base,
                                                  *city, "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["code"] == "ALREADY"
            assert counts == [await conn.fetchval(f"SELECT count(*) FROM {t}") for t in
                              ("clearing_books", "clearing_chargebacks", "clearing_discrepancies")]

            assert await asyncio.to_thread(main, ["settle", "import-clearing", "--window", W2, "--house", base,
                                                  *city]) == 0
            printed = capsys.readouterr().out
            assert "net 357 fen" in printed and "chargeback HZ:11:1 (acquirer, 300 fen, operator bus-a): bad TAC" \
                in printed, printed
            got = await clearing_books.read_imported(conn, W2)
            assert got is not None and got.discrepancies == []
            assert [(c.record_id, c.role, c.amount_fen, c.reason, c.counterparty_id, c.terminal_id)
                    for c in got.chargebacks] == [("HZ:11:1", "acquirer", 300, "bad TAC", "bus-a", 11)]
            assert got.loss_fen == got.statement["chargebacks_paid_fen"] == 300 - 300 * RATES["SH"] // 10_000 == 297
            assert got.statement["net_fen"] == (660 - 6) - 297  # docs/clearing.md's worked example
            assert await clearing_books.losses(conn, W2) == {"bus-a": 300}
            house_w2 = await house.statement("HZ", W2)
            assert house_w2 is not None and clearing_books.differences(got, house_w2) == {}
            assert clearing_books.differences(got, {**figures_json(house_w2), "net_fen": 1}) == {
                "net_fen": (got.statement["net_fen"], 1)}
            assert (await store.show(conn, W1)).lines == lines_before  # the operator's due never moves

            # a different report for an imported window is refused, changing nothing
            figures = await asyncio.to_thread(clearing_books.fetch, base, "HZ", W2)
            forged = clearing_books.HouseFigures("HZ", W2, {**figures.report, "records": 999})
            again = await clearing_books.import_window(conn, forged, [])
            assert again.code == clearing_books.ImportCode.CONFLICT and again.chargebacks == got.chargebacks
            same = await clearing_books.import_from_house(conn, base, "HZ", W2, [])
            assert same.code == clearing_books.ImportCode.ALREADY and same.statement == got.statement
        finally:
            await server.stop()
            await house.close()
            await conn.close()

    asyncio.run(run())
