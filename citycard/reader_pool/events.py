"""What the reader pool reports: readers and cards coming and going. Plain values, and their
one-line and JSON forms (pure; the time comes in with the event)."""

import json
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class ReaderAdded:
    reader: str
    at_s: float  # wall-clock time it was seen (Unix seconds)


@dataclass(frozen=True)
class ReaderRemoved:
    reader: str
    at_s: float


@dataclass(frozen=True)
class CardInserted:
    reader: str
    atr: bytes
    at_s: float


@dataclass(frozen=True)
class CardRemoved:
    reader: str
    at_s: float


ReaderEvent = ReaderAdded | ReaderRemoved | CardInserted | CardRemoved

_KIND: dict[type, str] = {
    ReaderAdded: "reader_added", ReaderRemoved: "reader_removed",
    CardInserted: "card_inserted", CardRemoved: "card_removed",
}


def event_kind(event: ReaderEvent) -> str:
    """``reader_added``, ``reader_removed``, ``card_inserted`` or ``card_removed``."""
    return _KIND[type(event)]


def _iso(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SelectAnswer:
    """A card's answer to the SELECT ``readers watch --select`` sends it, or why there is none."""

    sw: str | None = None  # 4 hex digits, e.g. "6A82"
    meaning: str | None = None
    error: str | None = None


def event_dict(event: ReaderEvent, select: SelectAnswer | None = None) -> dict[str, object]:
    out: dict[str, object] = {"time": _iso(event.at_s), "event": event_kind(event), "reader": event.reader}
    if isinstance(event, CardInserted):
        out["atr_hex"] = event.atr.hex().upper()
    if select is not None:
        out.update(select_sw=select.sw, select_meaning=select.meaning, select_error=select.error)
    return out


def event_line(event: ReaderEvent, select: SelectAnswer | None = None) -> str:
    """One line: time, event, reader, and for an inserted card its ATR (and SELECT answer)."""
    line = f"{_iso(event.at_s)} {event_kind(event)} {event.reader!r}"
    if isinstance(event, CardInserted):
        line += f" ATR {event.atr.hex().upper()}"
    if select is not None:
        line += f" SELECT -> {select.sw} ({select.meaning})" if select.sw else f" SELECT failed: {select.error}"
    return line


def event_json(event: ReaderEvent, select: SelectAnswer | None = None) -> str:
    return json.dumps(event_dict(event, select), separators=(",", ":"))
