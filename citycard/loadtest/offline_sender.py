"""The load lab's offline uploader: one process of validator terminals that upload signed
batches of offline (city-pass) records at the city's pace, alongside the online senders,
through the real gateway socket (``TerminalClient.upload``).

Records arrive as a Poisson process at ``rate_per_s`` overall, each at a random validator, by a
random offline card (``offline_gen.CardDeck``). A validator closes a batch when it is full or
its oldest record waited ``linger_ms``, fixes it (batch seq and MAC), and sends its batches one
at a time, oldest first, as a validator's uploader does. An upload's latency runs from when its
batch closed to its ack, so a slow host shows as latency, never as fewer uploads. A share of
acked batches is sent again unchanged (a lost ack): the answer must be the first one.

At the end it writes what it made (every record's key, amount and TAC; every card's chip
state) for the audit, and reports codes, latencies and its own CPU.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from ..domain.offline import IssuerKeys, batch_key
from ..domain.offline_book import OfflineCode
from ..protocols.codes import ErrorCode
from ..terminal.client import ServerError, TerminalClient
from .offline_gen import (
    Batch,
    CardDeck,
    CardPurse,
    DtkCache,
    ValidatorBook,
    WhenCache,
    forge_times_ms,
)
from .schedule import Steady, TerminalPicker, arrival_chunks

ORIGIN_WAIT_S = 180.0
MAX_ATTEMPTS = 6
MAX_SLEEP_MS = 20.0
TICK_MS = 5.0  # the loop wakes at most this often for arrivals: a wake per record would cost more than it
_CODE_NAMES = {int(c): c.name for c in OfflineCode}


@dataclass(frozen=True)
class OfflineSpec:
    host: str
    port: int
    master_key: bytes  # terminals' authentication master (section 6)
    issuer: tuple[str, str, str]  # MPK, MLK, MTK hex: the card side computes TACs with them
    batch_master_key: bytes
    validators: list[tuple[int, int, int]]  # (terminal id, kind, route)
    first_batch_seq: dict[int, int]  # terminal id -> the last batch seq its uploads used
    first_terminal_seq: dict[int, int]  # terminal id -> the last SAM seq it used
    cards: list[tuple[int, int, int]]  # (card, on-card balance, next offline counter)
    rate_per_s: float
    duration_ms: float
    max_records: int
    max_batch: int
    out_dir: str
    seed: int = 1
    linger_ms: float = 1000.0
    replay_share: float = 0.02
    forged: int = 0
    timeout_ms: float = 30_000.0


@dataclass
class _Validator:
    book: ValidatorBook
    client: TerminalClient | None = None
    outbox: list[Batch] = field(default_factory=list)
    busy: bool = False


class OfflineUploader:
    def __init__(self, spec: OfflineSpec, report: Any) -> None:
        self.spec = spec
        self.report = report
        issuer = IssuerKeys.of_hex(*spec.issuer)
        self.deck = CardDeck([CardPurse(c, bal, n) for c, bal, n in spec.cards], DtkCache(issuer),
                             random.Random(spec.seed * 7_919 + 17))
        self.rng = random.Random(spec.seed * 104_729 + 17)
        self.vals = [_Validator(ValidatorBook(tid, batch_key(spec.batch_master_key, tid), kind, route,
                                              spec.max_batch, spec.linger_ms,
                                              terminal_seq=spec.first_terminal_seq.get(tid, 0),
                                              batch_seq=spec.first_batch_seq.get(tid, 0)))
                     for tid, kind, route in spec.validators]
        self.latency = HdrHistogram(1, 60_000_000, 3)  # us, per batch
        self.codes: Counter[str] = Counter()
        self.records_made = 0
        self.forged_made = 0
        self.batches_acked = 0
        self.records_acked = 0
        self.replays_sent = self.replays_matched = 0
        self.retries = 0
        self.errors: list[str] = []
        self.unexpected: list[str] = []  # records whose code is not what an honest card gets
        self.failed_batches = 0
        self.made: list[tuple[int, int, int, bytes, bool]] = []  # card, counter, amount, tac, forged
        self._tasks: set[asyncio.Task[None]] = set()
        self._origin_perf = 0.0
        self._wall_origin_ms = 0.0
        self.last_ack_ms = 0.0

    def now_ms(self) -> float:
        return (time.perf_counter() - self._origin_perf) * 1000.0

    async def run(self, origin: Any = None) -> dict[str, Any]:
        spec = self.spec
        for v in self.vals:
            v.client = await self._connect(v.book.terminal_id)
        if origin is not None:
            self.report({"kind": "ready", "sender": "offline"})
            deadline = time.monotonic() + ORIGIN_WAIT_S
            while not origin.value:
                if time.monotonic() > deadline:
                    raise TimeoutError("the parent never set the run's origin")
                await asyncio.sleep(0.005)
            origin_unix_s = float(origin.value)
        else:
            origin_unix_s = time.time()
        self._origin_perf = time.perf_counter() - (time.time() - origin_unix_s)
        self._wall_origin_ms = origin_unix_s * 1000.0
        cpu_started = time.process_time()
        await self._loop()
        cpu_s = time.process_time() - cpu_started
        for v in self.vals:
            if v.client is not None:
                await v.client.close()
        files = self._write(Path(spec.out_dir))
        pct = {f"p{p:g}": self.latency.get_value_at_percentile(p) / 1000.0 for p in (50, 90, 99)} \
            if self.latency.get_total_count() else {}
        if self.latency.get_total_count():
            pct["max"] = self.latency.get_max_value() / 1000.0
        msg = {"kind": "offline_done", "sender": "offline", "records_made": self.records_made,
               "forged_made": self.forged_made, "refused_by_cards": self.deck.refused,
               "batches_acked": self.batches_acked, "records_acked": self.records_acked,
               "codes": dict(self.codes), "latency_ms": pct, "replays_sent": self.replays_sent,
               "replays_matched": self.replays_matched, "retries": self.retries,
               "failed_batches": self.failed_batches, "errors": self.errors[:50],
               "unexpected_codes": self.unexpected[:20], "cpu_s": cpu_s,
               "last_ack_ms": self.last_ack_ms, **files}
        self.report(msg)
        return msg

    async def _loop(self) -> None:
        spec = self.spec
        n = len(self.vals)
        chunks = arrival_chunks(Steady(spec.rate_per_s), random.Random(spec.seed * 31 + 17), TerminalPicker(n),
                                max_count=spec.max_records, max_duration_ms=spec.duration_ms)
        times, which = next(chunks, ([], []))
        pos = 0
        forge_at = forge_times_ms(spec.forged, spec.duration_ms)
        when = WhenCache()
        deck, vals = self.deck, self.vals
        hard_stop_ms = spec.duration_ms + spec.timeout_ms + 30_000.0
        while True:
            now = self.now_ms()
            while times and times[pos] <= now:  # every record due by now, at its validator
                at_ms = times[pos]
                v = vals[which[pos]]
                forge = bool(forge_at) and at_ms >= forge_at[0]
                made = deck.purchase(v.book.terminal_id, v.book.next_seq(), when(self._wall_origin_ms + at_ms),
                                     v.book.kind, v.book.route, forge)
                if made is not None:
                    if forge:
                        forge_at.pop(0)
                        self.forged_made += 1
                    self.records_made += 1
                    r = made.record
                    self.made.append((r.card_no, r.offline_counter, r.amount_fen, r.tac, made.forged))
                    batch = v.book.add(made, at_ms)
                    if batch is not None:
                        v.outbox.append(batch)
                pos += 1
                if pos == len(times):
                    times, which = next(chunks, ([], []))
                    pos = 0
            ended = not times
            for v in vals:
                if v.book.open and (ended or v.book.due(now)):
                    batch = v.book.close(v.book.first_ms + spec.linger_ms if not ended else now)
                    if batch is not None:
                        v.outbox.append(batch)
                if v.outbox and not v.busy:
                    v.busy = True
                    task = asyncio.get_running_loop().create_task(self._send_all(v))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            if ended and not self._tasks:
                return
            if now >= hard_stop_ms:
                self.errors.append(f"uploads still pending at the hard stop: {len(self._tasks)} validators")
                for task in list(self._tasks):
                    task.cancel()
                return
            wake = now + MAX_SLEEP_MS
            if times:  # records are taken a tick at a time (their batches keep their own due times)
                wake = min(wake, max(times[pos], now + TICK_MS))
            await asyncio.sleep(max(wake - self.now_ms(), 0.0) / 1000.0)

    async def _send_all(self, v: _Validator) -> None:
        try:
            while v.outbox:
                await self._send(v, v.outbox.pop(0))
        finally:
            v.busy = False

    async def _send(self, v: _Validator, batch: Batch) -> None:
        """Upload a batch until it is answered (bounded tries): the same batch each time."""
        codes = await self._upload(v, batch)
        if codes is None:
            self.failed_batches += 1
            return
        now = self.now_ms()
        self.last_ack_ms = max(self.last_ack_ms, now)
        self.latency.record_value(max(1, int((now - batch.due_ms) * 1000)))
        self.batches_acked += 1
        self.records_acked += len(codes)
        if len(codes) != len(batch.records):
            self.errors.append(f"batch {batch.terminal_id}/{batch.batch_seq}: {len(codes)} codes "
                               f"for {len(batch.records)} records")
            return
        for code, forged, r in zip(codes, batch.forged, batch.records, strict=True):
            self.codes[_CODE_NAMES.get(code, str(code))] += 1
            want = OfflineCode.BAD_TAC if forged else OfflineCode.ACCEPTED
            if code != want and len(self.unexpected) < 20:
                self.unexpected.append(f"card {r.card_no} counter {r.offline_counter}: {_CODE_NAMES.get(code, code)}"
                                       f", expected {want.name}")
        if self.spec.replay_share and self.rng.random() < self.spec.replay_share:
            self.replays_sent += 1  # the ack was lost: the validator sends the batch again
            again = await self._upload(v, batch)
            if again == codes:
                self.replays_matched += 1
            elif len(self.errors) < 50:
                self.errors.append(f"replay of batch {batch.terminal_id}/{batch.batch_seq}: {again} != {codes}")

    async def _upload(self, v: _Validator, batch: Batch) -> list[int] | None:
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self.retries += 1
                await asyncio.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
            try:
                if v.client is None:
                    v.client = await self._connect(batch.terminal_id)
                ack = await v.client.upload(batch.batch_seq, batch.records, batch.mac)
            except ServerError as exc:
                if exc.error.code == ErrorCode.INTERNAL:
                    continue  # not processed: the same batch again later
                self.errors.append(f"batch {batch.terminal_id}/{batch.batch_seq}: {exc}")
                return None
            except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
                if len(self.errors) < 50:
                    self.errors.append(f"validator {batch.terminal_id}: {exc!r}")
                old, v.client = v.client, None
                if old is not None:
                    await old.close()
                continue
            if ack.batch_seq != batch.batch_seq:
                self.errors.append(f"ack for batch {ack.batch_seq}, sent {batch.batch_seq}")
                return None
            return list(ack.codes)
        self.errors.append(f"batch {batch.terminal_id}/{batch.batch_seq} unanswered after {MAX_ATTEMPTS} tries")
        return None

    async def _connect(self, terminal_id: int) -> TerminalClient:
        client = TerminalClient(terminal_id, self.spec.master_key)
        await client.connect(self.spec.host, self.spec.port)
        return client

    def _write(self, out: Path) -> dict[str, str]:
        """The audit's inputs: every record made, and every card's chip state now."""
        out.mkdir(parents=True, exist_ok=True)
        rec_path = out / "offline-records.bin"
        cols = [array("q"), array("q"), array("q"), array("q"), array("q")]
        for card, counter, amount, tac, forged in self.made:
            cols[0].append(card)
            cols[1].append(counter)
            cols[2].append(amount)
            cols[3].append(int.from_bytes(tac, "big"))
            cols[4].append(int(forged))
        _write_columns(rec_path, cols)
        card_path = out / "offline-cards.bin"
        purses = self.deck.purses
        _write_columns(card_path, [array("q", [p.card_no for p in purses]),
                                   array("q", [p.balance_fen for p in purses]),
                                   array("q", [p.first_counter for p in purses]),
                                   array("q", [p.records for p in purses])])
        return {"records_file": str(rec_path), "cards_file": str(card_path)}


def _write_columns(path: Path, cols: list[array[int]]) -> None:
    with path.open("wb") as f:
        array("q", [len(cols), len(cols[0])]).tofile(f)
        for c in cols:
            c.tofile(f)


def read_columns(path: str) -> list[array[int]]:
    """The columns ``_write_columns`` wrote (int64 each)."""
    with open(path, "rb") as f:
        head = array("q")
        head.fromfile(f, 2)
        n_cols, n = head
        cols = []
        for _ in range(n_cols):
            c = array("q")
            c.fromfile(f, n)
            cols.append(c)
    return cols


def offline_main(spec: OfflineSpec, queue: Any, origin: Any = None) -> None:
    """Entry point of the offline uploader's process: reports go to ``queue``."""
    import uvloop

    os.makedirs(spec.out_dir, exist_ok=True)
    try:
        uvloop.run(OfflineUploader(spec, queue.put).run(origin))
    except BaseException as exc:  # noqa: BLE001 - the parent must hear of it, whatever it was
        queue.put({"kind": "offline_failed", "sender": "offline", "error": repr(exc)})
