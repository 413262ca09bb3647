"""Reports over the journal, against real Postgres: park visitors per park per local day."""

import asyncio
import json
from datetime import date, datetime

from citycard.cli.main import main
from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.persistence import db
from citycard.persistence.migrate import migrate
from citycard.persistence.reports import ParkDay, park_visitors

HOUR_MS = 3_600_000
UTC8 = 8 * HOUR_MS
PARK, BUS, OK = int(TapKind.PARK_ENTRY), int(TapKind.BUS), int(Result.OK)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


# (shard, card, kind, route, tap time, result)
ROWS = [
    (0, 11, PARK, 1, "2009-03-01T09:00:00+08:00", OK),
    (1, 12, PARK, 1, "2009-03-01T23:30:00+08:00", OK),  # 15:30 UTC: still 1 March in Hangzhou
    (0, 11, PARK, 1, "2009-03-01T16:00:00+08:00", OK),  # the same pass holder, again
    (1, 12, PARK, 1, "2009-03-02T00:30:00+08:00", OK),  # 16:30 UTC on 1 March: 2 March in Hangzhou
    (0, 13, PARK, 2, "2009-03-01T10:00:00+08:00", OK),
    (0, 14, PARK, 3, "2009-03-01T10:00:00+08:00", int(Result.PASS_REQUIRED)),  # not admitted
    (1, 15, BUS, 1, "2009-03-01T10:00:00+08:00", OK),  # not a park
]


async def _seed(url: str, schema: str) -> None:
    conn = await db.connect(url, schema)
    try:
        await migrate(conn, schema, 2)
        await conn.executemany(
            "INSERT INTO journal (shard_id, lsn, terminal_id, seq, card_no, kind, route, tap_time_ms,"
            " applied_ms, result, amount_fen, balance_after_fen) VALUES ($1, $2, 1, $2, $3, $4, $5, $6, $6,"
            " $7, 0, 0)",
            [(shard, i + 1, card, kind, route, ms(at), result)
             for i, (shard, card, kind, route, at, result) in enumerate(ROWS)],
        )
    finally:
        await conn.close()


async def _report(url: str, schema: str, day: date | None = None) -> list[ParkDay]:
    conn = await db.connect(url, schema)
    try:
        return await park_visitors(conn, UTC8, day)
    finally:
        await conn.close()


def test_park_visitors_per_park_per_local_day(configured_services, schema):
    url = configured_services.db_url
    asyncio.run(_seed(url, schema))
    assert asyncio.run(_report(url, schema)) == [
        ParkDay(1, date(2009, 3, 1), 3, 2),
        ParkDay(2, date(2009, 3, 1), 1, 1),
        ParkDay(1, date(2009, 3, 2), 1, 1),
    ]
    assert asyncio.run(_report(url, schema, date(2009, 3, 2))) == [ParkDay(1, date(2009, 3, 2), 1, 1)]
    assert asyncio.run(_report(url, schema, date(2009, 3, 3))) == []


def test_parks_visitors_command_reads_the_configured_database(configured_services, schema, monkeypatch, capsys):
    url = configured_services.db_url
    asyncio.run(_seed(url, schema))
    monkeypatch.delenv("CITYCARD_CONFIG", raising=False)
    monkeypatch.setenv("CITYCARD_DATABASE_URL", url)
    monkeypatch.setenv("CITYCARD_REDIS_URL", configured_services.redis_url)
    monkeypatch.setenv("CITYCARD_DATABASE__SCHEMA", schema)
    assert main(["parks", "visitors", "--day", "2009-03-01", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {"park_id": 1, "name": "West Lake: Su Causeway gardens", "day": "2009-03-01", "visitors": 3, "cards": 2},
        {"park_id": 2, "name": "Lingyin scenic area", "day": "2009-03-01", "visitors": 1, "cards": 1},
    ]
    assert main(["parks", "visitors"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["park", "name", "day", "visitors", "cards"] and len(table) == 4
    assert main(["parks", "visitors", "--day", "March"]) == 2
    assert "--day 'March'" in capsys.readouterr().err


def test_parks_visitors_without_migrations_says_so(configured_services, schema, monkeypatch, capsys):
    monkeypatch.delenv("CITYCARD_CONFIG", raising=False)
    monkeypatch.setenv("CITYCARD_DATABASE_URL", configured_services.db_url)
    monkeypatch.setenv("CITYCARD_REDIS_URL", configured_services.redis_url)
    monkeypatch.setenv("CITYCARD_DATABASE__SCHEMA", schema)
    assert main(["parks", "visitors"]) == 2
    assert "citycard db migrate" in capsys.readouterr().err
