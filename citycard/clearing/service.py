"""The clearing house as a service: the pure core (domain/clearing.py) made durable by its
events (store.py).

One writer at a time: every mutating call takes one asyncio lock, opens a transaction, applies
itself to the in-memory core, writes its event row with the outcome, and commits. Should
anything fail after the core moved (the database gone, a constraint), the core is rebuilt from
the stored events before the error goes up, so memory never holds what the database does not.
One house per schema: a Postgres advisory lock held for the service's life refuses a second.

On start the core is rebuilt by replaying the accepted events in their order; each replayed
delivery must be accepted again with the same count (else the store and the core disagree: an
error, not a guess).
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..domain.clearing import MAX_PARTICIPANTS, ClearingHouse
from ..domain.clearing_records import (
    ClearingCode,
    ClearingRecord,
    Closed,
    Ingested,
    Outcome,
    SettlementReport,
    Statement,
)
from ..errors import CityCardError
from ..persistence import db
from ..protocols.clearing_files import parse_csv
from . import store
from .wire import records_request_bytes, verdict_bytes

T = TypeVar("T")
DUPLICATE_PARTICIPANT = "DUPLICATE_PARTICIPANT"
TOO_MANY_PARTICIPANTS = "TOO_MANY_PARTICIPANTS"


class HouseService:
    def __init__(self, pool: asyncpg.Pool, lock_conn: asyncpg.Connection, schema: str, retain_windows: int,
                 max_records_per_window: int) -> None:
        self.pool = pool
        self.schema = schema
        self._lock_conn = lock_conn
        self._bounds = (retain_windows, max_records_per_window)
        self.core = ClearingHouse(retain_windows, max_records_per_window)
        self._lock = asyncio.Lock()
        self._stale = False  # the core may hold what was not committed: replay before use
        self.replayed = 0

    @classmethod
    async def open(cls, db_url: str, schema: str = "clearing", *, retain_windows: int = 7,
                   max_records_per_window: int = 5_000_000, pool_size: int = 4) -> "HouseService":
        """Make the schema if new, take the single-writer lock, replay the events."""
        store.check_schema(schema)
        lock_conn = await db.connect(db_url, schema)
        try:
            await store.migrate(lock_conn, schema, {"retain_windows": str(retain_windows),
                                                    "max_records_per_window": str(max_records_per_window)})
            if not await store.try_single_writer(lock_conn, schema):
                raise CityCardError(f"another clearing house runs on schema {schema}")
            pool = await db.create_pool(db_url, schema, pool_size)
        except BaseException:
            await lock_conn.close()
            raise
        house = cls(pool, lock_conn, schema, retain_windows, max_records_per_window)
        try:
            await house._replay()
        except BaseException:
            await house.close()
            raise
        return house

    async def close(self) -> None:
        await self.pool.close()
        await self._lock_conn.close()  # ends the session: the advisory lock goes with it

    async def _replay(self) -> None:
        core = ClearingHouse(*self._bounds)
        n = 0
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            async for e in store.events(conn):
                _apply(core, e)
                n += 1
        self.core, self.replayed = core, n

    async def _mutate(self, step: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``step`` applies itself to the core and writes its row, in one transaction; if
        anything fails, the core is rebuilt from what was committed."""
        async with self._lock:
            if self._stale:
                await self._replay()
                self._stale = False
            self._stale = True
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    out = await step(conn)
            except BaseException:
                await self._replay()  # if this fails too, _stale stays set: the next call tries again
                self._stale = False
                raise
            self._stale = False
            return out

    # -- mutations ------------------------------------------------------------------------
    async def register(self, city: str, public_key: bytes, net_debit_cap_fen: int, rate_bp: int,
                       card_prefixes: tuple[str, ...] = ()) -> Outcome | str:
        """ClearingCode.OK, DUPLICATE_PARTICIPANT (a city registers once) or TOO_MANY_PARTICIPANTS
        (nothing changes)."""
        key = Ed25519PublicKey.from_public_bytes(public_key)

        async def step(conn: asyncpg.Connection) -> Outcome | str:
            if city in self.core._participants:
                return DUPLICATE_PARTICIPANT
            if len(self.core._participants) >= MAX_PARTICIPANTS:
                return TOO_MANY_PARTICIPANTS
            await store.add_participant(conn, city, public_key, net_debit_cap_fen, rate_bp, card_prefixes)
            self.core.register(city, key, net_debit_cap_fen, rate_bp, card_prefixes)
            return Outcome(ClearingCode.OK)

        return await self._mutate(step)

    async def deliver(self, sender: str, window: str, manifest: bytes, signature: bytes,
                      files: Mapping[str, bytes]) -> Ingested:
        """The core's verdict on a delivery, kept with it; a refusal changes nothing but its row."""
        digest = hashlib.sha256(manifest).hexdigest()

        async def step(conn: asyncpg.Connection) -> Ingested:
            # seconds for millions of records: off the event loop (the lock keeps everyone else out)
            got = await asyncio.to_thread(self.core.ingest, sender, window, manifest, signature, files)
            await store.add_delivery(conn, sender, window, manifest, signature, digest, int(got.code), got.reason,
                                     got.accepted, len(got.rejected), files)
            return got

        return await self._mutate(step)

    async def verdict(self, issuer: str, record_id: str, reason: str, signature: bytes) -> Outcome:
        """An issuer's rejection of a record, signed with its registered key."""
        async def step(conn: asyncpg.Connection) -> Outcome:
            p = self.core._participants.get(issuer)
            if p is None:
                got = Outcome(ClearingCode.UNKNOWN_SENDER, f"{issuer!r} is not a participant")
            else:
                try:
                    p.public_key.verify(signature, verdict_bytes(issuer, record_id, reason))
                    got = self.core.reject(issuer, record_id, reason)
                except InvalidSignature:
                    got = Outcome(ClearingCode.BAD_SIGNATURE, f"the verdict's signature does not check with"
                                                              f" {issuer}'s key")
            await store.add_verdict(conn, issuer, record_id, reason, signature, int(got.code), got.reason)
            return got

        return await self._mutate(step)

    async def close_window(self, window: str) -> Closed:
        """Idempotent: a window closed before gives its report again and writes nothing."""
        async def step(conn: asyncpg.Connection) -> Closed:
            before = self.core.report(window) if _held(self.core, window) else None
            got = self.core.close(window)
            if got.code == ClearingCode.OK and before is None:
                await store.add_close(conn, window)
            return got

        return await self._mutate(step)

    async def settled(self, city: str, window: str) -> Outcome:
        async def step(conn: asyncpg.Connection) -> Outcome:
            got = self.core.settled(city, window)
            if got.code == ClearingCode.OK:
                await store.add_settled(conn, city, window)
            return got

        return await self._mutate(step)

    # -- reads: under the lock too, so nothing uncommitted is ever seen -------------------------
    async def _read(self, body: Callable[[ClearingHouse], T]) -> T:
        async with self._lock:
            if self._stale:
                await self._replay()
                self._stale = False
            return body(self.core)

    async def report(self, window: str) -> SettlementReport | None:
        return await self._read(lambda core: core.report(window))

    async def statement(self, city: str, window: str) -> Statement | None:
        return await self._read(lambda core: core.statement(city, window))

    async def is_held(self, window: str) -> bool:
        return await self._read(lambda core: _held(core, window))

    async def participants(self) -> list[str]:
        return await self._read(lambda core: list(core._participants))

    async def suspended(self) -> frozenset[str]:
        return await self._read(lambda core: core.suspended)

    async def records_of(self, issuer: str, window: str, signature: bytes) -> list[ClearingRecord] | Outcome:
        """The records cleared against ``issuer``'s cards in a held window, from the stored files,
        for it to check (TACs) and reject: asked with its signature over records_request_bytes."""
        async with self._lock:
            p = self.core._participants.get(issuer)
            if p is None:
                return Outcome(ClearingCode.UNKNOWN_SENDER, f"{issuer!r} is not a participant")
            try:
                p.public_key.verify(signature, records_request_bytes(issuer, window))
            except InvalidSignature:
                return Outcome(ClearingCode.BAD_SIGNATURE, f"the request's signature does not check with {issuer}'s key")
            w = self.core._windows.get(window)
            if w is None:
                return Outcome(ClearingCode.UNKNOWN_WINDOW, f"window {window} is not held")
            cleared, serial = self.core._cleared, w.serial
            async with self.pool.acquire() as conn:
                files = await store.accepted_files(conn, window)
        out, seen = [], set()
        for name, data in files:  # deliveries in order, files by name: the order the core cleared them
            for r in await asyncio.to_thread(parse_csv, data, name):
                packed = cleared.get(r.record_id)
                if (r.issuer == issuer and r.record_id not in seen and packed is not None and packed >> 64 == serial):
                    seen.add(r.record_id)
                    out.append(r)
        return out

    async def refused_count(self) -> int:
        async with self.pool.acquire() as conn:
            return await store.refused_deliveries(conn)


def _held(core: ClearingHouse, window: str) -> bool:
    return window in core._windows


def _apply(core: ClearingHouse, e: store.Event) -> None:
    r: Any = e.row
    if e.kind == "participant":
        core.register(r["city"], Ed25519PublicKey.from_public_bytes(bytes(r["public_key"])),
                      r["net_debit_cap_fen"], r["rate_bp"], tuple(r["card_prefixes"]))
    elif e.kind == "delivery":
        got = core.ingest(r["sender"], r["window_name"], bytes(r["manifest"]), bytes(r["signature"]), r["files"])
        if got.code != ClearingCode.OK or got.accepted != r["accepted"]:
            raise CityCardError(f"replay: delivery {e.seq} ({r['sender']}, {r['window_name']}) gives"
                                f" {got.code.name} {got.accepted} now, {r['accepted']} accepted when stored")
    elif e.kind == "verdict":
        got_v = core.reject(r["issuer"], r["record_id"], r["reason"])
        if got_v.code != ClearingCode.OK:
            raise CityCardError(f"replay: verdict {e.seq} on {r['record_id']} gives {got_v.code.name} now")
    elif e.kind == "close":
        if core.close(r["window_name"]).code != ClearingCode.OK:
            raise CityCardError(f"replay: close of {r['window_name']} refused now")
    elif e.kind == "settled":
        core.settled(r["city"], r["window_name"])
