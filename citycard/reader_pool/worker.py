"""One thread per reader owns that reader's PC/SC context and card handle; the event loop
hands it jobs through a bounded queue and gets each result back on an asyncio future.

pyscard blocks, and a card that never answers keeps ``SCardTransmit`` from returning. The
pool then *abandons* the worker (its result is dropped; it releases its handle and context and
ends when pyscard returns) and starts a fresh one with a new context for that reader.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smartcard import scard

from .errors import (
    BadResponse,
    CardRemoved,
    NoCard,
    ReaderBusy,
    ReaderError,
    ReaderGone,
    ReaderPoolError,
)
from .metrics import ReaderMetrics

log = logging.getLogger(__name__)

_GONE = {scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE, scard.SCARD_E_NO_READERS_AVAILABLE}
_REMOVED = {scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_RESET_CARD,
            scard.SCARD_W_UNPOWERED_CARD, scard.SCARD_W_UNRESPONSIVE_CARD}
_PCI = {scard.SCARD_PROTOCOL_T0: scard.SCARD_PCI_T0, scard.SCARD_PROTOCOL_T1: scard.SCARD_PCI_T1}
_STATUS_PRESENT = 0x0004  # SCardStatus's SCARD_PRESENT in pcsc-lite (pyscard does not export it)
QUEUE_POLL_S = 0.25
REMOVAL_GRACE_S = 1.5  # pcscd polls card presence about every 0.4 s (vpcd's driver too)  # how often an idle worker looks at its stop flag


@dataclass
class Job:
    """``connect`` (answer: the ATR) or ``transmit`` (answer: the raw response), for the card
    of ``generation`` (the pool's count of cards seen in this reader)."""

    kind: str
    generation: int
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    apdu: bytes = b""


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # timed out or cancelled meanwhile: nobody waits for it
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class ReaderWorker:
    def __init__(self, reader: str, queue_depth: int, metrics: ReaderMetrics,
                 on_exit: Callable[["ReaderWorker"], None]) -> None:
        self.reader = reader
        self._metrics = metrics
        self._on_exit = on_exit
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_depth)
        self._stop = threading.Event()
        self.abandoned = False
        self._ctx: int | None = None
        self._card: int | None = None
        self._protocol = 0
        self._generation = -1  # the card generation self._card belongs to
        self._thread = threading.Thread(target=self._run, name=f"reader:{reader}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self._stop.is_set():
            raise ReaderGone(f"reader {self.reader!r} is no longer watched", self.reader)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self._metrics.error(self.reader, "busy")
            raise ReaderBusy(f"reader {self.reader!r} has {self._jobs.maxsize} commands queued", self.reader) from None

    def stop(self, why: ReaderPoolError) -> None:
        """No more jobs; queued ones fail with ``why``. The thread ends after its current job."""
        self._stop.set()
        self._fail_queued(why)
        try:
            self._jobs.put_nowait(None)  # wake it
        except queue.Full:
            pass  # it polls the stop flag anyway

    def abandon(self, why: ReaderPoolError) -> None:
        """The thread is stuck in pyscard: forget it. It cleans up if pyscard ever returns."""
        self.abandoned = True
        self.stop(why)

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _fail_queued(self, why: ReaderPoolError) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.loop.call_soon_threadsafe(_settle, job.future, None, why)

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    job = self._jobs.get(timeout=QUEUE_POLL_S)
                except queue.Empty:
                    continue
                if job is None or self._stop.is_set():
                    if job is not None:
                        job.loop.call_soon_threadsafe(_settle, job.future, None,
                                                      ReaderGone(f"reader {self.reader!r} stopped", self.reader))
                    continue
                try:
                    result, exc = self._do(job), None
                except ReaderPoolError as e:
                    result, exc = None, e
                except Exception as e:  # a pyscard surprise: the caller gets it as a ReaderError
                    log.exception("reader %r job failed", self.reader)
                    result, exc = None, ReaderError(f"reader {self.reader!r}: {e}", self.reader)
                job.loop.call_soon_threadsafe(_settle, job.future, result, exc)
        finally:
            self._release()
            try:
                self._on_exit(self)
            except RuntimeError:
                pass  # the event loop is closed: nobody to tell

    def _do(self, job: Job) -> bytes:
        if job.kind == "connect":
            return self._connect(job.generation)
        if self._card is None or self._generation != job.generation:
            self._connect(job.generation)
        return self._transmit(job.apdu)

    def _check(self, hr: int, doing: str) -> None:
        if hr == scard.SCARD_S_SUCCESS:
            return
        text = scard.SCardGetErrorMessage(hr).rstrip(".")
        if hr in _REMOVED:
            self._drop_card()
            self._metrics.error(self.reader, "card_removed")
            raise CardRemoved(f"{doing}: the card left reader {self.reader!r} ({text})", self.reader)
        if hr in _GONE:
            self._drop_card()
            self._metrics.error(self.reader, "reader_gone")
            raise ReaderGone(f"{doing}: reader {self.reader!r} is gone ({text})", self.reader)
        if hr in (scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED, scard.SCARD_E_INVALID_HANDLE):
            self._release()  # a new context next time
        self._metrics.error(self.reader, "pcsc")
        raise ReaderError(f"{doing}: reader {self.reader!r}: {text} (0x{hr & 0xFFFFFFFF:08X})", self.reader)

    def _connect(self, generation: int) -> bytes:
        self._drop_card()
        if self._ctx is None:
            hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            self._check(hr, "establish a PC/SC context")
            self._ctx = int(ctx)
        hr, card, protocol = scard.SCardConnect(self._ctx, self.reader, scard.SCARD_SHARE_SHARED,
                                                scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        if hr in (scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_REMOVED_CARD):
            raise NoCard(f"no card in reader {self.reader!r}", self.reader)
        self._check(hr, "connect")
        self._card, self._protocol, self._generation = card, protocol, generation
        hr, _, _, _, atr = scard.SCardStatus(card)
        self._check(hr, "read the ATR")
        return bytes(atr)

    def _transmit(self, apdu: bytes) -> bytes:
        assert self._card is not None
        started = time.monotonic()
        hr, response = scard.SCardTransmit(self._card, _PCI.get(self._protocol, scard.SCARD_PCI_T1), list(apdu))
        if hr == scard.SCARD_E_NOT_TRANSACTED:  # a pull mid-APDU, or an answer the reader refused
            self._removed_since(apdu)
            self._metrics.error(self.reader, "bad_response")
            raise BadResponse(f"reader {self.reader!r}: the exchange of {apdu[:4].hex().upper()} failed with the "
                              "card still in: its answer was not a response APDU (e.g. shorter than the 2-byte "
                              "status word) or broke off (PC/SC: Transaction failed)", self.reader)
        self._check(hr, f"transmit {apdu[:4].hex().upper()}")
        raw = bytes(response)
        if not raw:
            self._removed_since(apdu)  # vpcd answers a pulled card's APDU with 0 bytes, not an error
        if len(raw) < 2:
            self._metrics.error(self.reader, "bad_response")
            raise BadResponse(f"reader {self.reader!r}: the card answered {apdu[:4].hex().upper()} with "
                              f"{len(raw)} byte(s) ({raw.hex().upper() or 'nothing'}), not a response APDU "
                              "(needs at least the 2-byte status word)", self.reader, raw)
        self._metrics.apdu(self.reader, int.from_bytes(raw[-2:], "big"), time.monotonic() - started)
        return raw

    def _removed_since(self, apdu: bytes) -> None:
        """CardRemoved if the card has left (asked of PC/SC with the card handle, for up to
        ``REMOVAL_GRACE_S``: pcscd notices a pull on its next presence poll)."""
        assert self._card is not None
        deadline = time.monotonic() + REMOVAL_GRACE_S
        while True:
            hr, _, state, _, _ = scard.SCardStatus(self._card)
            if hr != scard.SCARD_S_SUCCESS or not state & _STATUS_PRESENT:
                self._check(hr if hr != scard.SCARD_S_SUCCESS else scard.SCARD_W_REMOVED_CARD,
                            f"transmit {apdu[:4].hex().upper()}")
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _drop_card(self) -> None:
        if self._card is not None:
            scard.SCardDisconnect(self._card, scard.SCARD_LEAVE_CARD)
            self._card, self._generation = None, -1

    def _release(self) -> None:
        try:
            self._drop_card()
        finally:
            self._card = None
            if self._ctx is not None:
                scard.SCardReleaseContext(self._ctx)
                self._ctx = None
