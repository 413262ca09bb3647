"""Persistence on real Postgres (configured and embedded): migrations, the journal's group
commit, a failed commit, and recovery (snapshot + journal tail) giving back the same ledger."""

import asyncio
import math
import random
import time
from collections.abc import Sequence

import asyncpg
import msgspec
import pytest

from citycard.actors.journal_writer import JournalWriter
from citycard.config.fare_table import shipped_tables
from citycard.domain.cards import (
    CardState,
    CardStatus,
    Category,
    encode_card,
    make_card_no,
    restore_card,
)
from citycard.domain.ledger import Ledger
from citycard.domain.results import Result
from citycard.domain.shard import shard_of
from citycard.domain.taps import JournalRow, Outcome, Tap, TapKind
from citycard.errors import StoreError
from citycard.loadtest.city import CARD_SEED_COLUMNS, plan_cards, plan_terminals, seed_city
from citycard.persistence.db import connect
from citycard.persistence.journal import JOURNAL_COLUMNS, pg_append
from citycard.persistence.migrate import MigrationError, migrate, migration_files
from citycard.persistence.recovery import (
    RecoveryReport,
    compact_states,
    load_ledger,
    write_snapshot,
)
from tests.support.ledger import card_states
from tests.support.services import ServiceUrls

pytestmark = pytest.mark.services

SHARDS = 2
COLS = ", ".join(JOURNAL_COLUMNS)
T0_MS = 1_760_000_000_000  # a tap clock in 2025
TIMEOUT_S = 15.0
TABLES = shipped_tables()

SCHEMA_TABLES = {
    "schema_migrations", "meta", "cards", "terminals", "journal", "shard_heads", "snapshots",
    "card_state_log", "hotlist", "hotlist_log",
}


async def _migrated(urls: ServiceUrls, schema: str, shards: int = SHARDS) -> asyncpg.Connection:
    conn = await connect(urls.db_url, schema)
    await migrate(conn, schema, shards)
    return conn


async def _tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
        schema,
    )
    return {r[0] for r in rows}


async def _heads(conn: asyncpg.Connection) -> dict[int, int]:
    return {r[0]: r[1] for r in await conn.fetch("SELECT shard_id, lsn FROM shard_heads")}


def _rows(first_lsn: int, n: int, terminal_id: int = 2001) -> list[JournalRow]:
    """n synthetic journal rows with lsn first_lsn.. (every column distinct per row)."""
    return [
        JournalRow(lsn, terminal_id, lsn, make_card_no(lsn), int(TapKind.BUS), 7, T0_MS + lsn,
                   T0_MS + 500 + lsn, int(Result.OK), 182, 100_000 - 182 * lsn,
                   request_fen=lsn % 11, bill_class=lsn % 4, fund_fen=lsn % 13, fare_version=1 + lsn % 3,
                   concession=lsn % 5 - 1, d_epurse=-182 + lsn % 7, d_general=-(lsn % 7), d_voucher=lsn % 2,
                   d_allowance=-(lsn % 2), d_medical=lsn % 3, d_deposit=-(lsn % 3))
        for lsn in range(first_lsn, first_lsn + n)
    ]


# -- migrations ---------------------------------------------------------------------------

def test_migrations_apply_once_and_make_shard_partitions(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        conn = await connect(services.db_url, schema)
        try:
            expected = [name for _, name, _ in migration_files()]
            assert expected[0] == "0001_init.sql"
            assert await migrate(conn, schema, 3) == expected
            assert await migrate(conn, schema, 3) == []

            tables = await _tables(conn, schema)
            assert SCHEMA_TABLES | {"journal_p0", "journal_p1", "journal_p2"} <= tables
            assert "journal_p3" not in tables
            parts = await conn.fetch(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
                " JOIN pg_namespace n ON n.oid = p.relnamespace"
                " WHERE p.relname = 'journal' AND n.nspname = $1",
                schema,
            )
            assert dict(parts) == {
                "journal_p0": "FOR VALUES IN (0)",
                "journal_p1": "FOR VALUES IN (1)",
                "journal_p2": "FOR VALUES IN (2)",
            }
            assert await _heads(conn) == {0: 0, 1: 0, 2: 0}
            assert await conn.fetchval("SELECT value FROM meta WHERE key = 'account_shards'") == "3"
            recorded = [tuple(r) for r in await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")]
            assert recorded == [(v, n) for v, n, _ in migration_files()]

            for other in (4, 2):
                with pytest.raises(MigrationError, match="account_shards") as info:
                    await migrate(conn, schema, other)
                assert str(other) in str(info.value) and "3" in str(info.value)
            # The refused runs left nothing behind, and the connection is usable again.
            tables = await _tables(conn, schema)
            assert "journal_p3" not in tables
            assert await conn.fetchval("SELECT value FROM meta WHERE key = 'account_shards'") == "3"
            assert await _heads(conn) == {0: 0, 1: 0, 2: 0}
            assert await migrate(conn, schema, 3) == []
        finally:
            await conn.close()

    asyncio.run(run())


def test_concurrent_migrators_apply_each_migration_once(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        conns = [await connect(services.db_url, schema) for _ in range(3)]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(migrate(c, schema, SHARDS) for c in conns)), TIMEOUT_S
            )
            expected = [name for _, name, _ in migration_files()]
            assert sorted(results, key=len) == [[], [], expected]
            assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(expected)
            assert await _heads(conns[0]) == {0: 0, 1: 0}
        finally:
            for c in conns:
                await c.close()

    asyncio.run(run())


# -- the journal writer -------------------------------------------------------------------

def test_journal_group_commit_writes_every_row_once_in_lsn_order(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        admin = await _migrated(services, schema)
        wconn = await connect(services.db_url, schema)
        writer = JournalWriter(pg_append(wconn, 1, schema), max_rows=50)
        writer.start()
        try:
            # 1. Many batches submitted without awaiting in between: grouped, bounded by max_rows.
            batches, lsn = [], 1
            for i in range(40):
                n = 1 + i % 7
                batches.append(_rows(lsn, n))
                lsn += n
            total = lsn - 1
            futs = [writer.submit(b) for b in batches]
            assert not any(f.done() for f in futs)
            await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT_S)
            assert all(f.done() and f.exception() is None for f in futs)
            assert math.ceil(total / 50) <= writer.commits < len(batches)
            assert writer.committed_lsn == total
            assert writer.idle

            expected = [msgspec.structs.astuple(r) for b in batches for r in b]
            stored = [tuple(r) for r in await admin.fetch(f"SELECT {COLS} FROM journal_p1 ORDER BY ctid")]
            assert stored == expected  # physically appended in lsn order, each row once
            assert await admin.fetchval("SELECT count(*) FROM journal WHERE shard_id = 1") == total
            assert await admin.fetchval("SELECT count(*) FROM journal WHERE shard_id <> 1") == 0
            assert await _heads(admin) == {0: 0, 1: total}

            # 2. Concurrent producers, each awaiting its own batch: resolved means committed.
            next_lsn = total + 1
            check = await connect(services.db_url, schema)
            check_lock = asyncio.Lock()  # producers take turns on the checker connection
            seen_uncommitted: list[int] = []

            async def producer(k: int) -> None:
                nonlocal next_lsn
                for j in range(5):
                    rows = _rows(next_lsn, 1 + (k + j) % 4, terminal_id=3000 + k)
                    next_lsn += len(rows)
                    await writer.submit(rows)
                    last = rows[-1].lsn
                    async with check_lock:
                        found = await check.fetchval("SELECT count(*) FROM journal_p1 WHERE lsn = $1", last)
                    if found != 1:
                        seen_uncommitted.append(last)

            commits_before = writer.commits
            try:
                await asyncio.wait_for(asyncio.gather(*(producer(k) for k in range(8))), TIMEOUT_S)
            finally:
                await check.close()
            assert seen_uncommitted == []
            final = next_lsn - 1
            assert writer.committed_lsn == final
            assert writer.commits - commits_before < 40
            lsns = [r[0] for r in await admin.fetch("SELECT lsn FROM journal_p1 ORDER BY ctid")]
            assert lsns == list(range(1, final + 1))
            assert await _heads(admin) == {0: 0, 1: final}

            # 3. Awaited one at a time: one commit each; an empty submit still resolves.
            commits_before = writer.commits
            for i in range(3):
                await asyncio.wait_for(writer.submit(_rows(final + 1 + i, 1)), TIMEOUT_S)
            assert writer.commits == commits_before + 3
            await asyncio.wait_for(writer.submit([]), TIMEOUT_S)
            assert await _heads(admin) == {0: 0, 1: final + 3}
            assert await admin.fetchval("SELECT count(DISTINCT lsn) FROM journal_p1") == final + 3
        finally:
            await writer.close()
            await wconn.close()
            await admin.close()

    asyncio.run(run())


def test_a_zombie_writer_cannot_commit_after_its_successor(services: ServiceUrls, schema: str) -> None:
    """A shard Ray restarted while the old process still runs: both hold a writer for the
    shard. Once the new one has committed, the old one's next commit is refused and writes
    nothing (found by the seeded simulation, tests/sim, seed 531 --zombie)."""
    async def run() -> None:
        admin = await _migrated(services, schema)
        old_conn, new_conn = await connect(services.db_url, schema), await connect(services.db_url, schema)
        old, new = (JournalWriter(pg_append(c, 0, schema), max_rows=50) for c in (old_conn, new_conn))
        old.start()
        new.start()
        try:
            await asyncio.wait_for(old.submit(_rows(1, 5)), TIMEOUT_S)
            # The successor loaded head 5 and commits lsns 6..8 ...
            await asyncio.wait_for(new.submit(_rows(6, 3, terminal_id=2002)), TIMEOUT_S)
            # ... then the zombie, still at head 5, commits its own 6..7: refused.
            with pytest.raises(StoreError, match="another writer"):
                await asyncio.wait_for(old.submit(_rows(6, 2, terminal_id=2003)), TIMEOUT_S)
            assert old.broken is not None and new.broken is None
            lsns = [r[0] for r in await admin.fetch("SELECT lsn FROM journal_p0 ORDER BY lsn")]
            assert lsns == list(range(1, 9))
            assert await admin.fetchval("SELECT count(*) FROM journal_p0 WHERE terminal_id = 2003") == 0
            assert (await _heads(admin))[0] == 8
            await asyncio.wait_for(new.submit(_rows(9, 2)), TIMEOUT_S)  # the successor goes on
            assert (await _heads(admin))[0] == 10
        finally:
            await old.close()
            await new.close()
            await old_conn.close()
            await new_conn.close()
            await admin.close()

    asyncio.run(run())


def test_a_hung_commit_fails_after_its_timeout_and_drops_its_connection(services: ServiceUrls, schema: str) -> None:
    """A commit that cannot finish (here the head row is locked by another transaction) fails
    after the commit timeout, whatever statement it hangs in: the connection is dropped, the
    writer breaks, nothing of it is stored, and a new writer commits once the lock goes."""
    async def run() -> None:
        admin = await _migrated(services, schema)
        locker = await connect(services.db_url, schema)
        wconn = await connect(services.db_url, schema)
        writer = JournalWriter(pg_append(wconn, 0, schema, timeout_s=0.5), max_rows=50)  # the watchdog alone
        writer.start()
        try:
            async with locker.transaction():
                await locker.execute("SELECT lsn FROM shard_heads WHERE shard_id = 0 FOR UPDATE")
                started = time.monotonic()
                with pytest.raises(StoreError, match="outcome unknown"):
                    await asyncio.wait_for(writer.submit(_rows(1, 3)), TIMEOUT_S)
                assert time.monotonic() - started < 3.0
                assert writer.broken is not None and wconn.is_closed()
            fresh = await connect(services.db_url, schema)
            try:
                again = JournalWriter(pg_append(fresh, 0, schema, timeout_s=5.0), max_rows=50)
                again.start()
                await asyncio.wait_for(again.submit(_rows(1, 3)), TIMEOUT_S)
                await again.close()
            finally:
                await fresh.close()
            assert [r[0] for r in await admin.fetch("SELECT lsn FROM journal_p0 ORDER BY lsn")] == [1, 2, 3]
        finally:
            await writer.close()
            await locker.close()
            await admin.close()

    asyncio.run(run())


def test_failed_commit_fails_pending_and_breaks_writer(services: ServiceUrls, schema: str) -> None:
    async def run() -> None:
        admin = await _migrated(services, schema)
        wconn = await connect(services.db_url, schema)
        writer = JournalWriter(pg_append(wconn, 0, schema), max_rows=5)
        writer.start()
        try:
            await asyncio.wait_for(writer.submit(_rows(1, 5)), TIMEOUT_S)
            assert writer.broken is None and writer.commits == 1

            pid = wconn.get_server_pid()
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid) is True
            assert await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) == 0

            # Three groups (max_rows=5): the first commit fails, the two behind it fail too.
            futs = [writer.submit(_rows(6 + 5 * i, 5)) for i in range(3)]
            results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), TIMEOUT_S)
            assert [type(r) for r in results] == [StoreError] * 3, results
            assert writer.broken is not None
            assert writer.commits == 1 and writer.committed_lsn == 5

            started = time.perf_counter()
            late = writer.submit(_rows(21, 1))
            assert late.done()  # fails fast, without touching the store
            assert time.perf_counter() - started < 0.1
            with pytest.raises(StoreError, match="broken"):
                late.result()

            # The record holds exactly what was committed before the failure.
            assert [r[0] for r in await admin.fetch("SELECT lsn FROM journal_p0 ORDER BY lsn")] == [1, 2, 3, 4, 5]
            assert await _heads(admin) == {0: 5, 1: 0}
        finally:
            await writer.close()
            wconn.terminate()
            await admin.close()

    asyncio.run(run())


# -- snapshot + journal replay ------------------------------------------------------------

N_CARDS = 400  # about 200 in shard 0
TERMINALS = tuple(range(5001, 5011))
COL = {name: i for i, name in enumerate(CARD_SEED_COLUMNS)}
OPENING_PURSES = ("opening_fen", "opening_general_fen", "opening_voucher_fen", "opening_allowance_fen",
                  "opening_medical_fen")  # by Purse index; nothing is held in DEPOSIT at first


def _city(seed: int) -> list[tuple]:
    """plan_cards (products valid at the tap clock), with some shard-0 cards blocked and some
    with a nearly empty e-purse."""
    out = []
    for i, row in enumerate(plan_cards(N_CARDS, SHARDS, seed, now_ms=T0_MS)):
        card = list(row)
        if card[COL["shard_id"]] == 0 and i % 23 == 0:
            card[COL["status"]] = int(CardStatus.BLOCKED)
        elif card[COL["shard_id"]] == 0 and i % 17 == 0:
            card[COL["opening_fen"]] = 300
        out.append(tuple(card))
    return out


def _opening_purses(row: tuple) -> list[int]:
    return [row[COL[name]] for name in OPENING_PURSES] + [0]


class TapSource:
    """Random taps for shard 0: every kind (bus, water bus, amounts, bikes and parking in pairs,
    parks, library, medical bills), bad taps, unknown cards, retries."""

    def __init__(self, rng: random.Random, mine: Sequence[int], others: Sequence[int]) -> None:
        self.rng = rng
        self.mine = list(mine)
        self.others = list(others)
        self.seq = dict.fromkeys(TERMINALS, 0)
        self.history: list[Tap] = []  # taps that were decided (journaled)
        self.clock = T0_MS
        self.opened: list[tuple[int, int]] = []  # (card, closing kind) of rentals and sessions sent

    def _new(self) -> Tap:
        rng = self.rng
        terminal = rng.choice(TERMINALS)
        self.seq[terminal] += 1
        seq = self.seq[terminal]
        self.clock += rng.randint(1, 10_000)
        t = self.clock
        r = rng.random()
        card = (rng.choice(self.mine) if r < 0.85 else rng.choice(self.others) if r < 0.93
                else make_card_no(8_000_000 + rng.randint(1, 10_000)))
        k = rng.random()
        if k < 0.35:
            return Tap(terminal, seq, card, t, int(TapKind.BUS), rng.randint(1, 500))
        if k < 0.50:
            return Tap(terminal, seq, card, t, int(TapKind.MERCHANT), rng.choice((0, 9001, 9002, 9003)),
                       rng.randint(1, 6_000))
        if k < 0.56:
            return Tap(terminal, seq, card, t, int(TapKind.TAXI), 0, rng.randint(1_000, 9_000))
        if k < 0.59:
            return Tap(terminal, seq, card, t, int(TapKind.PETROL), 0, rng.randint(1_000, 9_000))
        if k < 0.62:
            return Tap(terminal, seq, card, t, int(TapKind.WATER_BUS), rng.randint(1, 2))
        if k < 0.74:  # bikes and parking: half the time, close one opened before
            if self.opened and rng.random() < 0.5:
                card, kind = self.opened.pop(rng.randrange(len(self.opened)))
                return Tap(terminal, seq, card, t, kind, rng.randint(1, 9))
            kind, closing = rng.choice(((TapKind.BIKE_RENT, TapKind.BIKE_RETURN),
                                        (TapKind.PARKING_ENTRY, TapKind.PARKING_EXIT)))
            self.opened.append((card, int(closing)))
            return Tap(terminal, seq, card, t, int(kind), rng.randint(1, 9))
        if k < 0.78:
            return Tap(terminal, seq, card, t, int(TapKind.PARK_ENTRY), rng.randint(1, 3))
        if k < 0.82:
            return Tap(terminal, seq, card, t, int(TapKind.LIBRARY), rng.randint(1, 2))
        if k < 0.88:
            return Tap(terminal, seq, card, t, int(TapKind.MEDICAL), 0, rng.randint(1_000, 50_000),
                       bill_class=rng.randint(1, 3))
        if k < 0.94:
            return Tap(terminal, seq, card, t, int(TapKind.MERCHANT), 0, 0)  # BAD_TAP
        return Tap(terminal, seq, card, t, int(TapKind.BUS), 0)  # BAD_TAP

    def batch(self, n: int, retries: bool = True) -> list[Tap]:
        out = []
        for _ in range(n):
            r = self.rng.random()
            if retries and self.history and r < 0.10:
                out.append(self.rng.choice(self.history))  # the same tap again
            elif retries and self.history and r < 0.13:
                old = self.rng.choice(self.history)  # same (terminal, seq), another card
                card = self.rng.choice([c for c in self.mine[:3] if c != old.card_no])
                out.append(Tap(old.terminal_id, old.seq, card, old.time_ms, old.kind, old.route, old.amount_fen,
                               bill_class=old.bill_class))
            else:
                out.append(self._new())
        return out


Decided = dict[tuple[int, int], tuple[Tap, Outcome]]


async def _drive(ledger: Ledger, writer: JournalWriter, source: TapSource, decided: Decided, batches: int) -> None:
    """Apply random batches and journal their rows; a few submits at a time, then wait."""
    futs = []
    for i in range(batches):
        taps = source.batch(source.rng.randint(1, 40))
        outcomes, rows = ledger.apply(taps, source.clock + 50)
        fresh = []
        for tap, out in zip(taps, outcomes, strict=True):
            key = (tap.terminal_id, tap.seq)
            if out.replay:
                assert msgspec.structs.replace(decided[key][1], replay=True) == out
            elif out.result == Result.DUPLICATE_SEQ:
                assert key in decided and decided[key][0].card_no != tap.card_no
            else:
                assert key not in decided
                decided[key] = (tap, out)
                fresh.append(tap)
        assert len(rows) == len(fresh)
        assert [(r.terminal_id, r.seq) for r in rows] == [(t.terminal_id, t.seq) for t in fresh]
        source.history.extend(fresh)
        futs.append(writer.submit(rows))
        if i % 6 == 5:
            await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT_S)
            futs = []
    await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT_S)


@pytest.mark.parametrize("with_snapshot,stopped", [(True, False), (False, False), (True, True)],
                         ids=["snapshot", "journal-only", "snapshot-stopped-between-chunks"])
def test_recovery_rebuilds_the_same_ledger(services: ServiceUrls, schema: str, with_snapshot: bool,
                                           stopped: bool) -> None:
    """``stopped``: a second snapshot is cancelled after some of its chunks (the shard died):
    those cards' states are newer than the mark, and their rows up to it must not count twice."""
    async def run() -> None:
        seed = 20240611
        city = _city(seed)
        mine = {c[0]: c for c in city if c[COL["shard_id"]] == 0}
        assert all(shard_of(c, SHARDS) == 0 for c in mine) and 150 < len(mine) < 250
        others = [c[0] for c in city if c[COL["shard_id"]] != 0]
        opening_total = sum(sum(_opening_purses(c)) for c in mine.values())

        admin = await _migrated(services, schema)
        wconn = await connect(services.db_url, schema)
        try:
            await seed_city(admin, city, plan_terminals(10, seed))
            ledger = Ledger(0, TABLES)
            first = await load_ledger(admin, ledger)
            assert first == RecoveryReport(0, len(mine), 0, 0, 0, 0, 0)
            assert {c.card_no: c.purses for c in ledger.cards.values()} == {
                c: _opening_purses(row) for c, row in mine.items()}
            assert ledger.balances() == {c: sum(_opening_purses(row)) for c, row in mine.items()}

            writer = JournalWriter(pg_append(wconn, 0, schema), max_rows=200)
            writer.start()
            source = TapSource(random.Random(seed), sorted(mine), others)
            decided: Decided = {}
            try:
                await _drive(ledger, writer, source, decided, 30)
                snapshot_lsn = 0
                if with_snapshot:
                    assert writer.idle and writer.committed_lsn == ledger.lsn > 0
                    snapshot_lsn = ledger.lsn
                    rows, changed = ledger.snapshots.take()  # as the shard does: the cards taps changed
                    assert 0 < len(rows) <= len(mine) and len(ledger.snapshots) == 0
                    await write_snapshot(admin, 0, snapshot_lsn, rows, sum(r[1] for r in rows))
                    assert await admin.fetchval(
                        "SELECT balance_fen FROM snapshots WHERE shard_id = 0 AND snapshot_lsn = $1", snapshot_lsn
                    ) == sum(ledger.balances().get(c, 0) for c in changed)  # unknown cards have no state
                await _drive(ledger, writer, source, decided, 30)
                assert writer.idle and writer.committed_lsn == ledger.lsn > snapshot_lsn
                if stopped:
                    rows, _ = ledger.snapshots.take()
                    task = asyncio.ensure_future(write_snapshot(admin, 0, ledger.lsn, rows, 0, chunk_cards=5,
                                                                chunk_pause_s=0.5))
                    await asyncio.sleep(0.7)  # two chunks stored, then the shard dies
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    await _drive(ledger, writer, source, decided, 30)
                assert writer.broken is None
            finally:
                await writer.close()

            head = ledger.lsn
            results = {out.result for _, out in decided.values()}
            assert {Result.OK, Result.CARD_UNKNOWN, Result.CARD_BLOCKED, Result.BAD_TAP,
                    Result.INSUFFICIENT_FUNDS} <= results
            charged = sum(out.fare_fen for _, out in decided.values() if out.result == Result.OK)
            assert ledger.total_balance_fen() == opening_total - charged
            assert await admin.fetchval("SELECT count(*) FROM journal_p0") == head == len(decided)
            # the taps left state to recover: deposits held, rentals and sessions open, counters
            live = card_states(ledger)
            cards = ledger.cards.values()
            assert any(c.purses[5] for c in cards) and any(c.rental for c in cards)
            assert any(c.parking for c in cards) and any(c.recent for c in cards)
            assert any(c.rides for c in cards)
            assert any(c.purses[1:5] != _opening_purses(mine[c.card_no])[1:5] for c in cards)  # not only e-purses

            # A fresh ledger from the record.
            fresh = Ledger(0, TABLES)
            report = await load_ledger(admin, fresh)
            # rows already in a card's state stored past the mark are not replayed on it again
            skipped = await admin.fetchval(
                "SELECT count(*) FROM journal_p0 j JOIN card_states s USING (card_no)"
                " WHERE s.shard_id = 0 AND j.lsn > $1 AND j.lsn <= s.as_of_lsn", snapshot_lsn)
            assert (skipped > 0) == stopped
            states = await admin.fetchval("SELECT count(*) FROM card_state_log WHERE shard_id = 0")
            assert (states > 0) == (with_snapshot or stopped)
            assert report == RecoveryReport(0, len(mine), snapshot_lsn, head, head - snapshot_lsn - skipped,
                                            snapshot_lsn + skipped, 0, states)
            assert [c.purses for c in fresh.cards.values()] == [c.purses for c in ledger.cards.values()]
            assert card_states(fresh) == live
            assert fresh.balances() == ledger.balances()
            assert fresh.lsn == head
            assert fresh.dedupe_size() == ledger.dedupe_size() == head

            # Retries of earlier taps (before and after the snapshot) answer as first decided.
            sample = random.Random(seed + 7).sample(sorted(decided), 200)
            for key in sample:
                tap, out = decided[key]
                again, rows = fresh.apply([tap], source.clock + 99)
                assert rows == [] and again == [msgspec.structs.replace(out, replay=True)], (tap, out, again)
            assert fresh.balances() == ledger.balances() and fresh.lsn == head
            assert card_states(fresh) == live

            # A ledger with a small dedupe memory still rebuilds the same cards.
            small = Ledger(0, TABLES, dedupe_limit=50)
            small_report = await load_ledger(admin, small)
            start = max(0, min(snapshot_lsn, head - 50))
            assert small_report == RecoveryReport(
                0, len(mine), snapshot_lsn, head, head - snapshot_lsn - skipped, max(0, snapshot_lsn - start) + skipped, 0,
                states,
            )
            assert small.lsn == head and small.dedupe_size() == 50
            assert small.balances() == fresh.balances()
            assert card_states(small) == live

            # From here on both ledgers decide the same.
            more = source.batch(60)
            assert fresh.apply(more, source.clock + 100) == ledger.apply(more, source.clock + 100)
            assert card_states(fresh) == card_states(ledger)
        finally:
            await wconn.close()
            await admin.close()

    asyncio.run(run())


@pytest.mark.parametrize("with_snapshot", [True, False], ids=["snapshot", "journal-only"])
def test_recovered_ledger_does_not_charge_an_old_retry_again(
    services: ServiceUrls, schema: str, with_snapshot: bool
) -> None:
    """A terminal that tapped long ago (beyond the dedupe memory) retries an old seq: the live
    ledger answers SEQ_TOO_OLD (its watermark); the recovered ledger must answer the same."""

    async def run() -> None:
        limit = 20
        card_a, card_b = [c for c in (make_card_no(s) for s in range(1, 50)) if shard_of(c, SHARDS) == 0][:2]
        admin = await _migrated(services, schema)
        wconn = await connect(services.db_url, schema)
        writer = JournalWriter(pg_append(wconn, 0, schema), max_rows=1000)
        writer.start()
        try:
            await admin.executemany(
                "INSERT INTO cards (card_no, shard_id, opening_fen) VALUES ($1, 0, 100000)", [(card_a,), (card_b,)]
            )
            live = Ledger(0, TABLES, dedupe_limit=limit)
            await load_ledger(admin, live)
            # rides of one card on one bus a minute apart: none within the anti-passback window
            old = [Tap(7001, s, card_a, T0_MS + s * 60_000, int(TapKind.BUS), 9) for s in range(1, 6)]
            later = [Tap(7002, s, card_b, T0_MS + 600_000 + s * 60_000, int(TapKind.BUS), 9) for s in range(1, 101)]
            for batch in (old, later):
                outcomes, rows = live.apply(batch, T0_MS + 10_000)
                assert all(o.result == Result.OK for o in outcomes)
                await asyncio.wait_for(writer.submit(rows), TIMEOUT_S)
            if with_snapshot:
                await write_snapshot(admin, 0, live.lsn, live.snapshot_rows(), live.total_balance_fen())

            retry = old[2]
            [live_answer], live_rows = live.apply([retry], T0_MS + 20_000)
            assert live_answer == Outcome(Result.SEQ_TOO_OLD, 0, -1, False) and live_rows == []

            recovered = Ledger(0, TABLES, dedupe_limit=limit)
            await load_ledger(admin, recovered)
            assert recovered.balances() == live.balances() == {card_a: 100_000 - 5 * 182, card_b: 100_000 - 100 * 182}
            assert card_states(recovered) == card_states(live)
            before = recovered.balances()[card_a]
            [answer], rows = recovered.apply([retry], T0_MS + 20_000)
            assert rows == [], f"an old retry was journaled again: {rows}"
            assert answer == live_answer
            assert recovered.balances()[card_a] == before
        finally:
            await writer.close()
            await wconn.close()
            await admin.close()

    asyncio.run(run())


def _snapshot_card(serial: int, lsn: int, epurse_fen: int) -> CardState:
    """A card whose every piece of tap-made state differs with ``lsn``."""
    card = CardState(make_card_no(serial), CardStatus.ACTIVE, Category.ELDERLY, 0,
                     purses=[epurse_fen, lsn, 2 * lsn, 3 * lsn, 4 * lsn, 500])
    card.rental = (serial, T0_MS + lsn, 500)
    card.parking = (7, T0_MS - lsn)
    card.rides = {(0, 20_000 + lsn): 2}
    card.recent = {5001: T0_MS + lsn, 5002: T0_MS}
    return card


def test_write_snapshot_keeps_each_cards_newest_state(services: ServiceUrls, schema: str) -> None:
    """A snapshot appends the cards changed since the last one: card_states shows each card's
    newest state, a late snapshot from a stale process never hides a newer one, only the newest
    mark per shard is kept, and compaction deletes the superseded states alone."""
    async def run() -> None:
        admin = await _migrated(services, schema)
        try:
            expected: dict[tuple[int, int], tuple[int, CardState]] = {}
            for shard, lsn, cards in [
                (1, 10, [_snapshot_card(1, 10, 990), _snapshot_card(2, 10, 510)]),
                (1, 20, [_snapshot_card(1, 20, 980)]),  # card 2 unchanged since lsn 10
                (1, 30, [_snapshot_card(2, 30, 530)]),
                (1, 15, [_snapshot_card(1, 15, 1), _snapshot_card(2, 15, 2)]),  # stale: older than both
                (0, 5, [_snapshot_card(3, 5, 7)]),
            ]:
                rows = [(c.card_no, c.total_fen(), encode_card(c)) for c in cards]
                await write_snapshot(admin, shard, lsn, rows, sum(c.total_fen() for c in cards))
                for c in cards:
                    held = expected.get((shard, c.card_no))
                    if held is None or held[0] <= lsn:
                        expected[(shard, c.card_no)] = (lsn, c)
            snaps = [tuple(r) for r in await admin.fetch(
                "SELECT shard_id, snapshot_lsn, cards, balance_fen FROM snapshots ORDER BY 1, 2")]
            assert snaps == [(0, 5, 1, 7 + 5 * 10 + 500), (1, 30, 1, 530 + 30 * 10 + 500)]
            stored = await admin.fetch("SELECT shard_id, card_no, as_of_lsn, balance_fen, state FROM card_states")
            assert {(r["shard_id"], r["card_no"]): r["as_of_lsn"] for r in stored} == {
                key: lsn for key, (lsn, _) in expected.items()}
            assert [(k, lsn) for k, (lsn, _) in sorted(expected.items())] == [
                ((0, make_card_no(3)), 5), ((1, make_card_no(1)), 20), ((1, make_card_no(2)), 30)]
            for r in stored:  # what is stored gives back the whole card state, and its money
                original = expected[(r["shard_id"], r["card_no"])][1]
                card = CardState(r["card_no"], CardStatus.ACTIVE, Category.ELDERLY, 0)
                restore_card(card, r["state"])
                assert r["balance_fen"] == original.total_fen()
                assert (card.purses, card.rental, card.parking, card.rides, card.recent) == (
                    original.purses, original.rental, original.parking, original.rides, original.recent)
            # Appended, not upserted: every state written is in the log until compaction, which
            # deletes a card's older states on its own shard only, and the newest stay.
            assert await admin.fetchval("SELECT count(*) FROM card_state_log") == 7
            assert await compact_states(admin, 1, chunk_rows=1, chunk_pause_s=0) == 4
            assert await compact_states(admin, 1) == 0
            log_rows = [tuple(r) for r in await admin.fetch(
                "SELECT shard_id, card_no, as_of_lsn FROM card_state_log ORDER BY 1, 2")]
            assert log_rows == [(0, make_card_no(3), 5), (1, make_card_no(1), 20), (1, make_card_no(2), 30)]
            assert [tuple(r) for r in await admin.fetch(
                "SELECT shard_id, card_no, as_of_lsn, balance_fen, state FROM card_states")] == [tuple(r) for r in stored]
        finally:
            await admin.close()

    asyncio.run(run())
