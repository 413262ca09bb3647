"""Attached PC/SC card readers through pyscard and the system's pcscd: ``ReaderPool`` (hot-plug
events, a worker thread per reader, timeouts, metrics) and ``probe`` (one look at each)."""

from .errors import (
    ApduTimeout,
    BadResponse,
    CardRemoved,
    NoCard,
    PcscUnavailable,
    ReaderBusy,
    ReaderError,
    ReaderGone,
    ReaderPoolError,
)
from .events import CardInserted, ReaderAdded, ReaderEvent, ReaderRemoved
from .events import CardRemoved as CardRemovedEvent
from .metrics import ReaderMetrics
from .pool import CardSession, ReaderPool

__all__ = [
    "ApduTimeout", "BadResponse", "CardInserted", "CardRemoved", "CardRemovedEvent", "CardSession", "NoCard",
    "PcscUnavailable", "ReaderAdded", "ReaderBusy", "ReaderError", "ReaderEvent", "ReaderGone", "ReaderMetrics",
    "ReaderPool", "ReaderPoolError", "ReaderRemoved",
]
