"""Settlement inside a city on the machine's Postgres: journal rows and offline records of two
counterparties' terminals, closed into lines to the fen, closed again (identical, never
doubled), reconciled (terminal totals, unattributed taps, offline uploads), written as signed
files that check, and the same through the CLI."""

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import NamedTuple

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from citycard.cli.main import main
from citycard.cli.services import Services, connect_app, migrate_db
from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import Category
from citycard.domain.results import Result
from citycard.domain.settlement import SettleCode, full_fare_fen, window_bounds
from citycard.domain.taps import TapKind
from citycard.persistence import settlement as store
from citycard.persistence.settlement_export import file_rows, load_or_make_key, write_delivery
from citycard.protocols.settlement_files import check_delivery, parse_csv
from tests.support.cli import citycard_env
from tests.support.services import ServiceUrls, make_settings

pytestmark = pytest.mark.services

TABLES = shipped_tables()
OFFSET_MS = TABLES.versions[-1].utc_offset_ms
WINDOW = "2025-06-01"
START_MS, END_MS = window_bounds(WINDOW, OFFSET_MS)
NOW_MS = END_MS + 3_600_000
BP = {"bus-a": 150, "shop-b": 275}
TERMINALS = {11: "bus-a", 12: "bus-a", 21: "shop-b"}  # 99: attached to no one
CARDS = {1001: Category.ADULT, 1002: Category.ELDERLY, 1003: Category.STUDENT}
ROUTE = 5
FULL = full_fare_fen(TABLES.versions[-1], TapKind.BUS, ROUTE)
COLS = "shard_id, lsn, terminal_id, seq, card_no, kind, route, tap_time_ms, applied_ms, result, amount_fen," \
       " balance_after_fen, fare_version, op_key"


class J(NamedTuple):
    terminal: int
    seq: int
    card: int
    kind: int
    route: int
    applied_ms: int
    result: int
    amount_fen: int
    op_key: str | None


def _journal() -> list[J]:
    rows: list[J] = []
    seq = 0
    for i in range(40):
        seq += 1
        card = (1001, 1002, 1003)[i % 3]
        fare = {1001: FULL, 1002: 0, 1003: FULL // 2}[card]
        rows.append(J(11 + i % 2, seq, card, TapKind.BUS, ROUTE, START_MS + 1000 * i, Result.OK, fare, None))
    for i in range(7):
        rows.append(J(21, 100 + i, 1001, TapKind.MERCHANT, 3, START_MS + 5_000_000 + i, Result.OK, 1234 + 17 * i, None))
    rows += [
        J(11, 900, 1001, TapKind.BUS, ROUTE, START_MS + 50, Result.INSUFFICIENT_FUNDS, 0, None),  # not charged
        J(11, 901, 1001, TapKind.BUS, ROUTE, START_MS - 1, Result.OK, FULL, None),  # the window before
        J(12, 902, 1001, TapKind.BUS, ROUTE, END_MS, Result.OK, FULL, None),  # the window after
        J(21, 903, 1001, 100, 0, START_MS + 70, Result.OK, 5000, "op:topup:1"),  # a card-service op
        J(99, 1, 1001, TapKind.BUS, ROUTE, START_MS + 80, Result.OK, FULL, None),  # attached to no one
    ]
    return rows


JOURNAL = _journal()
OFFLINE = [  # (card, counter, amount_fen, terminal, batch_seq, kind, route)
    (1002, 1, 0, 11, 1, TapKind.BUS, ROUTE), (1001, 7, FULL, 11, 1, TapKind.BUS, ROUTE),
    (1001, 8, 999, 21, 5, TapKind.MERCHANT, 3), (1001, 9, 1001, 21, 5, TapKind.MERCHANT, 3),
]
BATCH_CODES = {(11, 1): [0, 0], (21, 5): [0, 1]}  # 21/5 answered one record journaled, two are kept


def _in_window(r: J) -> bool:
    return r.result == Result.OK and r.op_key is None and START_MS <= r.applied_ms < END_MS


def _expected() -> dict[str, tuple[int, int, int, int]]:
    """counterparty -> (taps, gross, online, offline), from the rows above, by the rules."""
    out = {cp: [0, 0, 0, 0] for cp in BP}
    for r in JOURNAL:
        if _in_window(r) and r.terminal in TERMINALS:
            a = out[TERMINALS[r.terminal]]
            a[0] += 1
            a[1] += r.amount_fen
            a[2] += r.amount_fen
    for _card, _c, fen, term, *_ in OFFLINE:
        a = out[TERMINALS[term]]
        a[0] += 1
        a[1] += fen
        a[3] += fen
    return {cp: (a[0], a[1], a[2], a[3]) for cp, a in out.items()}


async def _seed(conn: asyncpg.Connection) -> None:
    await conn.executemany("INSERT INTO cards (card_no, shard_id, category) VALUES ($1, $2, $3)",
                           [(c, c % 2, int(cat)) for c, cat in CARDS.items()])
    await conn.executemany(
        f"INSERT INTO journal ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 1, $12)",
        [(r.card % 2, n, r.terminal, r.seq, r.card, int(r.kind), r.route, r.applied_ms, r.applied_ms, int(r.result),
          r.amount_fen, r.op_key) for n, r in enumerate(JOURNAL, start=1)])
    lifetime: dict[int, list[int]] = {}
    for r in JOURNAL:
        if r.op_key is None:
            t = lifetime.setdefault(r.terminal, [0, 0])
            t[0] += 1
            t[1] += r.amount_fen if r.result == Result.OK else 0
    await conn.executemany("INSERT INTO terminals (terminal_id, kind, route, taps, charged_fen) VALUES ($1, 1, 5, $2, $3)",
                           [(t, n, fen + (100 if t == 12 else 0)) for t, (n, fen) in lifetime.items()])  # 12 is off
    received = dt.datetime.fromtimestamp((START_MS + 7_200_000) / 1000, dt.UTC)
    await conn.executemany(
        "INSERT INTO offline_records (card_no, offline_counter, amount_fen, balance_after_fen, tx_type, terminal_id,"
        " terminal_seq, tx_when, tac, kind, route, code, batch_seq, received_at)"
        " VALUES ($1, $2, $3, 0, 6, $4, $9, 20250601080000, '\\x00'::bytea, $6, $7, 0, $5, $8)",
        [(*o[:5], int(o[5]), o[6], received, o[1]) for o in OFFLINE])
    await conn.executemany("INSERT INTO offline_batches (terminal_id, batch_seq, mac, codes) VALUES ($1, $2, '', $3)",
                           [(t, s, codes) for (t, s), codes in BATCH_CODES.items()])


async def _app(urls: ServiceUrls, schema: str) -> asyncpg.Connection:
    settings = make_settings(urls, schema)
    await migrate_db(settings, urls.db_url)
    return await connect_app(settings, Services(urls.db_url, urls.redis_url))


async def _register(conn: asyncpg.Connection) -> None:
    for cp, bp in BP.items():
        kind = "merchant" if cp.startswith("shop") else "operator"
        assert await store.add_counterparty(conn, cp, kind, cp.upper(), bp) == SettleCode.OK
        assert await store.add_counterparty(conn, cp, kind, cp.upper(), bp) == SettleCode.ALREADY
    assert await store.add_counterparty(conn, "bus-a", "operator", "BUS-A", 1) == SettleCode.COUNTERPARTY_CONFLICT
    for cp in BP:
        code, new = await store.attach(conn, cp, [t for t, c in TERMINALS.items() if c == cp])
        assert code == SettleCode.OK and new
    assert await store.attach(conn, "shop-b", [11]) == (SettleCode.TERMINAL_TAKEN, [11])
    assert await store.attach(conn, "nobody", [77]) == (SettleCode.UNKNOWN_COUNTERPARTY, [])


def test_close_reconcile_files_and_again(configured_services: ServiceUrls, schema: str, tmp_path: Path) -> None:
    async def run() -> None:
        conn = await _app(configured_services, schema)
        try:
            await _seed(conn)
            await _register(conn)
            early = await store.close_window(conn, TABLES, WINDOW, START_MS, END_MS, END_MS, OFFSET_MS)
            assert early.code == SettleCode.NOT_ENDED and early.state == "open"
            first = await store.close_window(conn, TABLES, WINDOW, START_MS, END_MS, NOW_MS, OFFSET_MS)
            assert first.code == SettleCode.OK and first.state == "closed"
            want = _expected()
            got = {ln.counterparty_id: ln for ln in first.lines}
            assert set(got) == set(BP)
            for cp, (taps, gross, online, offline) in want.items():
                ln = got[cp]
                assert (ln.taps, ln.gross_fen, ln.online_fen, ln.offline_fen) == (taps, gross, online, offline)
                assert ln.commission_fen == gross * BP[cp] // 10_000 and ln.net_fen == gross - ln.commission_fen
            found = {(d.what, d.terminal_id): d for d in first.discrepancies}
            assert set(found) == {("terminal_totals", 12), ("unattributed", 99), ("offline_batch_count", 21)}
            assert found[("terminal_totals", 12)].found_fen - found[("terminal_totals", 12)].expected_fen == 100
            assert found[("unattributed", 99)].found_fen == FULL
            assert (found[("offline_batch_count", 21)].expected_count, found[("offline_batch_count", 21)].found_count) \
                == (1, 2)

            again = await store.close_window(conn, TABLES, WINDOW, START_MS, END_MS, NOW_MS + 1, OFFSET_MS)
            assert again.code == SettleCode.ALREADY
            assert (again.lines, again.discrepancies) == (first.lines, first.discrepancies)
            assert await conn.fetchval("SELECT count(*) FROM settlement_lines WHERE window_id = $1", WINDOW) == len(BP)

            subsidy = {(r.category, day): r for r, day in await store.subsidy(conn, WINDOW)}
            elderly = [r for (cat, _d), r in subsidy.items() if cat == Category.ELDERLY]
            n_elderly = sum(1 for r in JOURNAL if _in_window(r) and r.card == 1002 and r.terminal in TERMINALS) + 1  # + offline
            assert sum(r.taps for r in elderly) == n_elderly
            assert sum(r.concession_fen for r in elderly) == n_elderly * FULL
            assert {cat for cat, _d in subsidy} == {Category.ELDERLY, Category.STUDENT}

            key = load_or_make_key(tmp_path / "key.pem")
            rows = await file_rows(conn, START_MS, END_MS, OFFSET_MS)
            where = write_delivery(tmp_path / "out", "hangzhou", first, rows, key)
            files = {p.name: p.read_bytes() for p in where.glob("*.csv")}
            body = check_delivery(key.public_key(), (where / "manifest.json").read_bytes(),
                                  (where / "manifest.sig").read_bytes(), files)
            assert {e["name"]: (e["records"], e["sum_fen"]) for e in body["files"]} == \
                {f"{cp}.csv": (w[0], w[1]) for cp, w in want.items()}
            assert len(parse_csv(files["bus-a.csv"], "bus-a.csv")) == want["bus-a"][0]

            assert await store.settle_window(conn, WINDOW) == SettleCode.OK
            assert await store.settle_window(conn, WINDOW) == SettleCode.ALREADY
            refused = await store.close_window(conn, TABLES, WINDOW, START_MS, END_MS, NOW_MS, OFFSET_MS)
            assert refused.code == SettleCode.SETTLED_REFUSED and refused.lines == first.lines
        finally:
            await conn.close()

    asyncio.run(run())


def test_cli(configured_services: ServiceUrls, schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in citycard_env(configured_services, schema, CITYCARD_STATE_DIR=str(tmp_path / "state")).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CITYCARD_CONFIG", raising=False)

    async def seed() -> None:
        conn = await _app(configured_services, schema)
        try:
            await _seed(conn)
        finally:
            await conn.close()

    asyncio.run(seed())
    assert main(["settle", "counterparty", "add", "bus-a", "--kind", "operator", "--name", "Bus A",
                 "--commission-bp", "150"]) == 0
    assert main(["settle", "counterparty", "add", "shop-b", "--kind", "merchant", "--name", "Shop B",
                 "--commission-bp", "275"]) == 0
    assert main(["settle", "attach", "bus-a", "--terminal", "11", "--terminal", "12"]) == 0
    assert main(["settle", "attach", "shop-b", "--terminal", "21"]) == 0
    assert main(["settle", "attach", "shop-b", "--terminal", "11"]) == 2  # taken by bus-a
    assert main(["settle", "show", "--window", WINDOW]) == 2  # not closed yet
    capsys.readouterr()
    assert main(["settle", "close", "--window", WINDOW, "--out", str(tmp_path / "files"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {ln["counterparty_id"]: ln["gross_fen"] for ln in out["lines"]} == {cp: w[1] for cp, w in _expected().items()}
    assert out["closed_now"] is True and len(out["discrepancies"]) == 3
    where = Path(out["files"])
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(out["public_key_hex"]))
    check_delivery(public, (where / "manifest.json").read_bytes(), (where / "manifest.sig").read_bytes(),
                   {p.name: p.read_bytes() for p in where.glob("*.csv")})
    assert main(["settle", "close", "--window", WINDOW, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["closed_now"] is False
    assert main(["settle", "subsidy", "--window", WINDOW, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["concession_fen"] > 0
    assert main(["settle", "mark-settled", "--window", WINDOW]) == 0
    assert main(["settle", "close", "--window", WINDOW]) == 2  # settled: refused
    capsys.readouterr()
    for bad in (["settle", "close", "--window", "2025-02-30"],
                ["settle", "counterparty", "add", "x", "--kind", "bank", "--name", "X", "--commission-bp", "1"],
                ["settle", "counterparty", "add", "x", "--kind", "operator", "--name", "X", "--commission-bp", "10001"],
                ["settle", "counterparty", "add", "Bad Id", "--kind", "operator", "--name", "X", "--commission-bp", "1"]):
        with pytest.raises(SystemExit) as exc:
            code = main(bad)
            raise SystemExit(code)
        assert exc.value.code == 2, bad
        assert capsys.readouterr().err.strip().count("\n") <= 3  # argparse: usage + one error line
