"""One look at every attached reader: its name, whether a card is in it, the card's ATR and,
if asked, the status word the card answers to a SELECT. Works with any ISO 7816 card.

pyscard blocks, and a reader or card may hang: each reader is looked at in a thread of its
own, and a look that takes longer than ``timeout_s`` is reported as such (its thread is left
to finish on its own; the command does not wait for it).
"""

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from ..protocols.apdu import describe, select_by_aid
from .errors import PcscUnavailable

MAX_READERS = 64  # more than any validator or counter has; bounds the threads


@dataclass(frozen=True)
class ReaderLook:
    reader: str
    card_present: bool
    atr_hex: str | None = None
    select_sw: str | None = None  # e.g. "9000", "6A82"
    select_meaning: str | None = None  # the status word in words
    error: str | None = None  # what went wrong with this reader, in a sentence


def reader_names() -> list[str]:
    try:
        from smartcard.pcsc.PCSCExceptions import BaseSCardException
        from smartcard.System import readers
    except ImportError:
        from .pool import PYSCARD_MISSING

        raise PcscUnavailable(PYSCARD_MISSING) from None

    try:
        return [str(r) for r in readers()][:MAX_READERS]
    except BaseSCardException as exc:
        raise PcscUnavailable(f"no PC/SC service: {exc} (is pcscd running?)") from None


def _look(name: str, select: bytes | None) -> ReaderLook:
    from smartcard.Exceptions import CardConnectionException, NoCardException
    from smartcard.System import readers

    reader = next((r for r in readers() if str(r) == name), None)
    if reader is None:
        return ReaderLook(name, False, error="the reader went away")
    conn = reader.createConnection()
    try:
        conn.connect()
    except NoCardException:
        return ReaderLook(name, False)
    except CardConnectionException as exc:
        return ReaderLook(name, False, error=f"cannot connect to the card: {exc}")
    try:
        atr_hex = bytes(conn.getATR()).hex().upper()
        if select is None:
            return ReaderLook(name, True, atr_hex)
        _, sw1, sw2 = conn.transmit(list(select))
        return ReaderLook(name, True, atr_hex, f"{sw1:02X}{sw2:02X}", describe(sw1 << 8 | sw2))
    except CardConnectionException as exc:
        return ReaderLook(name, True, error=f"the card stopped answering: {exc}")
    finally:
        try:
            conn.disconnect()
        except CardConnectionException:
            pass  # pulled meanwhile


def look_all(select_aid: bytes | None = None, timeout_s: float = 5.0) -> list[ReaderLook]:
    """Every reader, in pcscd's order; PcscUnavailable when there is no PC/SC service."""
    names = reader_names()
    select = select_by_aid(select_aid).encode() if select_aid is not None else None
    if not names:
        return []
    pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="reader-look")
    try:
        futures = [pool.submit(_look, n, select) for n in names]
        deadline = time.monotonic() + timeout_s  # one deadline for all: the readers are looked at at once
        out = []
        for name, fut in zip(names, futures, strict=True):
            try:
                out.append(fut.result(timeout=max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                out.append(ReaderLook(name, False, error=f"no answer within {timeout_s:g} s"))
        return out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
