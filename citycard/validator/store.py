"""The validator's durable local store (SQLite in its state directory): every sale's record
until the host has acknowledged it, the SAM's next transaction seq, the upload batch number,
and the parameters (fare table, hotlist) the gateway gave it.

A sale is written twice: *pending* before DEBIT goes to the card (with everything needed to
recover it: the card's random and counter, the seq), and *sold* once the card answered the
TAC. The store is bounded: when ``max_records`` records wait for upload it says it is full and
the validator stops selling; nothing is ever dropped to make room.
"""

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..domain.epurse_crypto import When
from ..domain.offline import OfflineRecord
from ..errors import CityCardError

KEEP_REFUSED = 10_000  # refused records kept for the operator (the host has them too)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
  terminal_seq INTEGER PRIMARY KEY,
  state TEXT NOT NULL CHECK (state IN ('pending', 'sold', 'refused')),
  card_no INTEGER NOT NULL, offline_counter INTEGER NOT NULL, amount_fen INTEGER NOT NULL,
  balance_after_fen INTEGER NOT NULL, transaction_type INTEGER NOT NULL, when_bcd BLOB NOT NULL,
  card_random BLOB NOT NULL, tac BLOB, kind INTEGER NOT NULL, route INTEGER NOT NULL,
  refused_code INTEGER, refused_reason TEXT
);
CREATE INDEX IF NOT EXISTS records_by_card ON records (card_no) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS hotlist (card_no INTEGER PRIMARY KEY);
"""


class StoreFull(CityCardError):
    """As many records wait for upload as the store may hold: sell nothing more until an
    upload frees room."""


@dataclass(frozen=True, slots=True)
class Pending:
    terminal_seq: int
    card_no: int
    offline_counter: int
    amount_fen: int
    balance_before_fen: int
    transaction_type: int
    when: When
    card_random: bytes
    kind: int
    route: int


class Store:
    def __init__(self, path: Path, terminal_id: int, max_records: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.terminal_id, self.max_records = terminal_id, max_records
        self.db = sqlite3.connect(path, isolation_level=None)  # explicit transactions below
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a kept sale survives a power cut
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- meta ------------------------------------------------------------------------------
    def get(self, key: str, default: bytes | int | None = None) -> bytes | int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def put(self, key: str, value: bytes | int) -> None:
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, value))

    def put_fares(self, version: int, text: str) -> None:
        with _transaction(self.db):
            self.put("fare_version", version)
            self.put("fare_table", text.encode())

    def fare_table_text(self) -> str | None:
        raw = self.get("fare_table")
        return raw.decode() if isinstance(raw, bytes) else None

    def next_seq(self) -> int:
        value = self.get("sam_next_seq", 1)
        assert isinstance(value, int)
        return value

    # -- sales -----------------------------------------------------------------------------
    def waiting(self) -> int:
        """Records not yet acknowledged by the host (pending or sold): what the bound counts."""
        return int(self.db.execute("SELECT count(*) FROM records WHERE state != 'refused'").fetchone()[0])

    def begin(self, p: Pending, next_seq: int) -> None:
        """Keep the pending sale and the SAM's next seq in one durable write, before DEBIT."""
        if self.waiting() >= self.max_records:
            raise StoreFull(f"{self.max_records} records wait for upload")
        with _transaction(self.db):
            self.db.execute(
                "INSERT INTO records (terminal_seq, state, card_no, offline_counter, amount_fen, balance_after_fen,"
                " transaction_type, when_bcd, card_random, kind, route) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (p.terminal_seq, p.card_no, p.offline_counter, p.amount_fen, p.balance_before_fen - p.amount_fen,
                 p.transaction_type, p.when.bcd(), p.card_random, p.kind, p.route))
            self.put("sam_next_seq", next_seq)

    def sold(self, terminal_seq: int, tac: bytes) -> None:
        self.db.execute("UPDATE records SET state = 'sold', tac = ? WHERE terminal_seq = ? AND state = 'pending'",
                        (tac, terminal_seq))

    def void(self, terminal_seq: int) -> None:
        """The card says the debit never happened (GET TRANSACTION PROOF 9406): no sale."""
        self.db.execute("DELETE FROM records WHERE terminal_seq = ? AND state = 'pending'", (terminal_seq,))

    def pending_for(self, card_no: int) -> list[Pending]:
        rows = self.db.execute(
            "SELECT terminal_seq, card_no, offline_counter, amount_fen, balance_after_fen + amount_fen,"
            " transaction_type, when_bcd, card_random, kind, route FROM records"
            " WHERE card_no = ? AND state = 'pending' ORDER BY terminal_seq", (card_no,)).fetchall()
        return [_pending(r) for r in rows]

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM records WHERE state = 'pending'").fetchone()[0])

    def to_upload(self, limit: int) -> list[OfflineRecord]:
        rows = self.db.execute(
            "SELECT card_no, offline_counter, amount_fen, balance_after_fen, transaction_type, terminal_seq,"
            " when_bcd, tac, kind, route FROM records WHERE state = 'sold' ORDER BY terminal_seq LIMIT ?",
            (limit,)).fetchall()
        return [_record(r, self.terminal_id) for r in rows]

    def records_by_seq(self, seqs: Sequence[int]) -> list[OfflineRecord]:
        marks = ",".join("?" * len(seqs))
        rows = self.db.execute(
            "SELECT card_no, offline_counter, amount_fen, balance_after_fen, transaction_type, terminal_seq,"
            f" when_bcd, tac, kind, route FROM records WHERE terminal_seq IN ({marks}) ORDER BY terminal_seq",
            tuple(seqs)).fetchall()
        if len(rows) != len(seqs):
            raise ValueError(f"the open batch names {len(seqs)} records, the store holds {len(rows)} of them")
        return [_record(r, self.terminal_id) for r in rows]

    def open_batch(self, batch_seq: int, spec: str) -> None:
        """Fix a batch before it is sent: a resend after a lost answer is the same batch."""
        with _transaction(self.db):
            self.put("batch_seq", batch_seq)
            self.put("open_batch", spec.encode())

    def acknowledged(self, done: Iterable[int], refused: Sequence[tuple[int, int, str]],
                     closing_batch: int = 0) -> None:
        """After the host's ack: forget records it keeps; mark those it refused (kept, with the
        reason, for the operator: a refused record is evidence, never deleted here)."""
        with _transaction(self.db):
            if closing_batch:
                self.db.execute("DELETE FROM meta WHERE key = 'open_batch'")
            self.db.executemany("DELETE FROM records WHERE terminal_seq = ? AND state = 'sold'",
                                ((s,) for s in done))
            self.db.executemany(
                "UPDATE records SET state = 'refused', refused_code = ?, refused_reason = ? WHERE terminal_seq = ?",
                ((code, reason, seq) for seq, code, reason in refused))
            # Refused records stay for the operator, the newest KEEP_REFUSED of them.
            self.db.execute("DELETE FROM records WHERE state = 'refused' AND terminal_seq NOT IN"
                            " (SELECT terminal_seq FROM records WHERE state = 'refused'"
                            "  ORDER BY terminal_seq DESC LIMIT ?)", (KEEP_REFUSED,))

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall()
        return {"pending": 0, "sold": 0, "refused": 0} | {state: n for state, n in rows}

    # -- hotlist ---------------------------------------------------------------------------
    def hotlist_apply(self, reset: bool, added: Iterable[int], removed: Iterable[int], version: int) -> None:
        with _transaction(self.db):
            if reset:
                self.db.execute("DELETE FROM hotlist")
            self.db.executemany("INSERT OR IGNORE INTO hotlist VALUES (?)", ((c,) for c in added))
            self.db.executemany("DELETE FROM hotlist WHERE card_no = ?", ((c,) for c in removed))
            self.put("hotlist_version", version)

    def listed(self, card_no: int) -> bool:
        return self.db.execute("SELECT 1 FROM hotlist WHERE card_no = ?", (card_no,)).fetchone() is not None


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _pending(r: tuple) -> Pending:  # type: ignore[type-arg]
    return Pending(r[0], r[1], r[2], r[3], r[4], r[5], When(r[6][:4], r[6][4:]), bytes(r[7]), r[8], r[9])


def _record(r: tuple, terminal_id: int) -> OfflineRecord:  # type: ignore[type-arg]
    return OfflineRecord(r[0], r[1], r[2], r[3], r[4], terminal_id, r[5], When(r[6][:4], r[6][4:]), bytes(r[7]),
                         r[8], r[9])
