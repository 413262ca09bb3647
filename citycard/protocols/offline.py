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


_VALID_DAYS: dict[int, bool] = {}  # YYYYMMDD -> a calendar date? (bounded: cleared when full)
_MAX_DAYS = 20_000


def when_bcd(digits: int) -> bytes | None:
    """``YYYYMMDDhhmmss`` as an integer to its 7 BCD bytes (date, time) as the TAC covers them;
    None if it is no calendar date and time (``when_of`` says why). The same checks as
    ``When.of``, cheaper (every uploaded record takes this path): a day is checked once, the
    time of day by arithmetic."""
    if isinstance(digits, bool) or not isinstance(digits, int) or not 10**13 <= digits < 10**14:
        return None
    day, clock = divmod(digits, 1_000_000)
    ok = _VALID_DAYS.get(day)
    if ok is None:
        try:
            _date(day // 10000, day // 100 % 100, day % 100)
            ok = True
        except ValueError:
            ok = False
        if len(_VALID_DAYS) >= _MAX_DAYS:
            _VALID_DAYS.clear()
        _VALID_DAYS[day] = ok
    if not ok or clock // 10000 > 23 or clock // 100 % 100 > 59 or clock % 100 > 59:
        return None
    return bytes.fromhex(f"{digits:014d}")


def when_of(digits: int) -> When:
    """``YYYYMMDDhhmmss`` as an integer to a ``When``; ValueError naming the field if it is no
    calendar date and time."""
    bcd = when_bcd(digits)
    if bcd is None:
        if isinstance(digits, bool) or not isinstance(digits, int) or not 10**13 <= digits < 10**14:
            raise ValueError(f"when must be a 14-digit YYYYMMDDhhmmss integer, got {digits!r}")
        day, clock = divmod(digits, 1_000_000)
        if not _VALID_DAYS.get(day, False):
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
                      bytes.fromhex(f"{i.when:014d}"), i.tac, i.kind, i.route))
    return h.digest()


def items_mac_ok(key: bytes, terminal_id: int, batch_seq: int, items: Sequence[OfflineRecordItem],
                 mac: bytes) -> bool:
    return hmac.compare_digest(items_mac(key, terminal_id, batch_seq, items), bytes(mac))


BAD_BATCH_MAC_MESSAGE = "batch MAC does not check: nothing journaled"
