"""Prometheus metrics of the reader pool, with label values kept to a bounded set: a reader
name is a label only for the first ``max_readers`` names seen (the rest are ``other``), and a
status word is its 4 hex digits only when the platform knows it (else its class, ``6AXX``)."""

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..protocols.apdu import StatusWord

_APDU_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
OTHER_READER = "other"
ERROR_KINDS = ("card_removed", "reader_gone", "timeout", "bad_response", "busy", "pcsc", "events_dropped")
_KNOWN_SW = frozenset(int(sw) for sw in StatusWord)
_FAMILIES = {0x61: "61XX", 0x6C: "6CXX"}  # a count in SW2: the family is the label


def sw_label(sw: int) -> str:
    """The label of a status word: 4 hex digits if known, its family for 61xx/6Cxx/63Cx, its
    class (``6AXX``) if unknown; at most a few hundred values whatever cards answer."""
    if not 0 <= sw <= 0xFFFF:
        return "invalid"
    if sw >> 8 in _FAMILIES:
        return _FAMILIES[sw >> 8]
    if sw & 0xFFF0 == StatusWord.VERIFY_FAILED:
        return "63CX"
    if sw in _KNOWN_SW:
        return f"{sw:04X}"
    return f"{sw >> 8:02X}XX"


class ReaderLabels:
    """The reader label for a name: the name itself for the first ``max_readers`` names seen,
    ``other`` after that (readers come and go; labels must not grow without bound)."""

    def __init__(self, max_readers: int) -> None:
        self._max = max_readers
        self._names: set[str] = set()
        self._lock = threading.Lock()  # worker threads and the event loop both label

    def __call__(self, reader: str) -> str:
        with self._lock:
            if reader in self._names:
                return reader
            if len(self._names) < self._max:
                self._names.add(reader)
                return reader
            return OTHER_READER


class ReaderMetrics:
    """The pool's metrics, in ``registry`` (a fresh one if None: several pools in one process
    then do not collide; the gateway passes its own to serve them at /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None, max_readers: int = 16) -> None:
        self.registry = registry or CollectorRegistry()
        self.label = ReaderLabels(max_readers)
        r = self.registry
        self.readers_present = Gauge("citycard_readers_present", "PC/SC readers attached and watched", registry=r)
        self.cards_seen = Counter("citycard_reader_cards_seen", "Cards put into a reader", ["reader"], registry=r)
        self.apdus = Counter("citycard_reader_apdus", "APDUs answered, by reader and status word (known words "
                             "as 4 hex digits, others by class, e.g. 6AXX)", ["reader", "sw"], registry=r)
        self.apdu_seconds = Histogram("citycard_reader_apdu_seconds", "One APDU sent to its response received",
                                      buckets=_APDU_BUCKETS_S, registry=r)
        self.errors = Counter("citycard_reader_errors", "Reader failures, by kind: " + ", ".join(ERROR_KINDS),
                              ["reader", "kind"], registry=r)

    def apdu(self, reader: str, sw: int, seconds: float) -> None:
        self.apdus.labels(self.label(reader), sw_label(sw)).inc()
        self.apdu_seconds.observe(seconds)

    def error(self, reader: str, kind: str) -> None:
        self.errors.labels(self.label(reader), kind).inc()

    def card_seen(self, reader: str) -> None:
        self.cards_seen.labels(self.label(reader)).inc()
