"""Offline records between the wire (``messages.OfflineRecordItem``) and the domain
(``domain.offline.OfflineRecord``), pure (docs/protocol.md, section 15)."""

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from datetime import date as _date

from ..domain.epurse_crypto import When
from ..domain.offline import OfflineRecord, batch_mac
from .messages import OfflineRecordItem

# domain.offline.record_bytes, from the wire item: a record whose date is no calendar date
# still has a MAC (the host refuses it as BAD_RECORD only after the batch checks).
_RECORD = struct.Struct(">QHIIBQI7s4sBI")


_DAYS: dict[int, bytes | None] = {}  # YYYYMMDD -> its BCD, None: no calendar date (cleared when full)
_CLOCKS: dict[int, bytes | None] = {}  # hhmmss -> its BCD, None: no time of day (at most 86,400 valid)
_MAX_KEYS = 100_000


def when_bcd(digits: int) -> bytes | None:
    """``YYYYMMDDhhmmss`` as an integer to its 7 BCD bytes (date, time) as the TAC covers them;
    None if it is no calendar date and time (``when_of`` says why). The same checks as
    ``When.of``, cheaper (every uploaded record takes this path): each day and each time of
    day is checked and converted once."""
    if type(digits) is not int or not 10**13 <= digits < 10**14:
        return None
    day, clock = divmod(digits, 1_000_000)
    d = _DAYS.get(day, b"")
    if d == b"":
        d = _cached(_DAYS, day, _day_bcd(day))
    t = _CLOCKS.get(clock, b"")
    if t == b"":
        t = _cached(_CLOCKS, clock, _clock_bcd(clock))
    return None if d is None or t is None else d + t


def _cached(cache: dict[int, bytes | None], key: int, value: bytes | None) -> bytes | None:
    if len(cache) >= _MAX_KEYS:
        cache.clear()
    cache[key] = value
    return value


def _day_bcd(day: int) -> bytes | None:
    try:
        _date(day // 10000, day // 100 % 100, day % 100)
    except ValueError:
        return None
    return bytes.fromhex(f"{day:08d}")


def _clock_bcd(clock: int) -> bytes | None:
    if clock // 10000 > 23 or clock // 100 % 100 > 59 or clock % 100 > 59:
        return None
    return bytes.fromhex(f"{clock:06d}")


def when_of(digits: int) -> When:
    """``YYYYMMDDhhmmss`` as an integer to a ``When``; ValueError naming the field if it is no
    calendar date and time."""
    bcd = when_bcd(digits)
    if bcd is None:
        if isinstance(digits, bool) or not isinstance(digits, int) or not 10**13 <= digits < 10**14:
            raise ValueError(f"when must be a 14-digit YYYYMMDDhhmmss integer, got {digits!r}")
        day, clock = divmod(digits, 1_000_000)
        if _day_bcd(day) is None:
            raise ValueError(f"date {day} is not a calendar date")
        raise ValueError(f"time {clock:06d} is not a time of day")
    # Checked as When.__post_init__ checks: built without checking again.
    w = object.__new__(When)
    object.__setattr__(w, "date", bcd[:4])
    object.__setattr__(w, "time", bcd[4:])
    return w


def when_digits(when: When) -> int:
    """A ``When`` as the wire's ``YYYYMMDDhhmmss`` integer."""
    return int(when.bcd().hex())


def record_of(item: OfflineRecordItem, terminal_id: int) -> OfflineRecord:
    """The domain record of a wire item uploaded by ``terminal_id``. ValueError (naming the
    field) for a date or time that is no calendar date (BAD_RECORD)."""
    return OfflineRecord(item.card, item.counter, item.amount_fen, item.balance_after_fen, item.type,
                         terminal_id, item.seq, when_of(item.when), bytes(item.tac), item.kind, item.route)


def item_of(record: OfflineRecord) -> OfflineRecordItem:
    """The wire item of a domain record (its terminal id travels once, in the connection)."""
    return OfflineRecordItem(card=record.card_no, counter=record.offline_counter, amount_fen=record.amount_fen,
                             balance_after_fen=record.balance_after_fen, type=record.transaction_type,
                             seq=record.terminal_seq, when=when_digits(record.when), tac=record.tac,
                             kind=record.kind, route=record.route)


def items_of(records: Iterable[OfflineRecord | OfflineRecordItem]) -> list[OfflineRecordItem]:
    return [r if isinstance(r, OfflineRecordItem) else item_of(r) for r in records]


def upload_mac(key: bytes, terminal_id: int, batch_seq: int, records: Sequence[OfflineRecord]) -> bytes:
    """The batch MAC an ``offline`` message carries: ``domain.offline.batch_mac`` with the
    terminal's batch key (``domain.offline.batch_key``)."""
    return batch_mac(key, terminal_id, batch_seq, records)


def items_mac(key: bytes, terminal_id: int, batch_seq: int, items: Sequence[OfflineRecordItem]) -> bytes:
    """The same MAC as ``upload_mac``, over wire items as they came (docs/protocol.md, 15.2)."""
    h = hmac.new(key, struct.pack(">QQI", terminal_id, batch_seq, len(items)), hashlib.sha256)
    pack = _RECORD.pack
    for i in items:
        h.update(pack(i.card, i.counter, i.amount_fen, i.balance_after_fen, i.type, terminal_id, i.seq,
                      when_bcd(i.when) or bytes.fromhex(f"{i.when:014d}"), i.tac, i.kind, i.route))
    return h.digest()


def items_mac_ok(key: bytes, terminal_id: int, batch_seq: int, items: Sequence[OfflineRecordItem],
                 mac: bytes) -> bool:
    return hmac.compare_digest(items_mac(key, terminal_id, batch_seq, items), bytes(mac))


BAD_BATCH_MAC_MESSAGE = "batch MAC does not check: nothing journaled"
