"""The city-pass application's files, pure: typed records with fixed byte layouts.

Each file is a frozen dataclass with ``encode() -> bytes`` and ``decode(bytes)``; decode
raises ValueError naming the field on bad bytes, and encode/decode are exact inverses (the
encoding is canonical: unused slots and reserved bytes are zero). Byte layouts are in
docs/card.md ("The card's files").

- SFI 0x15 issuer data (binary, 30 bytes): :class:`IssuerData`
- SFI 0x16 holder data (binary, 24 bytes): :class:`HolderData`
- SFI 0x17 compound (CAPP) record file; record 1 = the transit record (64 bytes): :class:`TransitRecord`
- SFI 0x18 transaction log (cyclic, 10 records of 23 bytes, newest = record 1): :class:`LogEntry`

:func:`personalise` gives everything a new card holds.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum

from ..domain.cards import CardState, Category
from ..domain.offline import CardKeys, IssuerKeys, card_serial
from ..domain.taps import TapKind

SFI_ISSUER = 0x15
SFI_HOLDER = 0x16
SFI_CAPP = 0x17
SFI_LOG = 0x18
TRANSIT_RECORD = 1  # record 1 of SFI 0x17: what validators read and rewrite
APP_TYPE_CITY_PASS = 0x01
APP_VERSION = 0x01
TRANSIT_FORMAT = 0x01
LOG_ENTRIES = 10
MAX_RECENT = 4  # = rules.RECENT_TERMINALS: the anti-passback memory
MAX_RIDE_COUNTERS = 2
MS_PER_S = 1000
_U32 = 2**32 - 1


class AppStatus(IntEnum):
    ACTIVE = 0x00
    BLOCKED = 0x01


class IdType(IntEnum):
    NONE = 0x00  # an anonymous card
    RESIDENT_ID = 0x01
    PASSPORT = 0x02
    OTHER = 0x09


# -- byte helpers ---------------------------------------------------------------------------
def _length(name: str, raw: bytes, n: int) -> bytes:
    if not isinstance(raw, bytes | bytearray):
        raise ValueError(f"{name} must be bytes, not {type(raw).__name__}")
    if len(raw) != n:
        raise ValueError(f"{name} must be {n} bytes, got {len(raw)}")
    return bytes(raw)


def _uint(name: str, value: int, n_bytes: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 256**n_bytes:
        raise ValueError(f"{name} must be an int in 0..{256**n_bytes - 1}, got {value!r}")
    return value.to_bytes(n_bytes, "big")


def _bcd(name: str, raw: bytes) -> int:
    digits = raw.hex()
    if not digits.isdigit():
        raise ValueError(f"{name} must be packed BCD, got {digits.upper()}")
    return int(digits)


def _bcd_date(name: str, raw: bytes) -> date:
    d = f"{_bcd(name, raw):08d}"
    try:
        return date(int(d[:4]), int(d[4:6]), int(d[6:]))
    except ValueError as e:
        raise ValueError(f"{name} {d} is not a calendar date: {e}") from None


def _date_bcd(name: str, value: date) -> bytes:
    if not isinstance(value, date):
        raise ValueError(f"{name} must be a date, not {type(value).__name__}")
    return bytes.fromhex(value.strftime("%Y%m%d"))


def _enum(name: str, kind: type[IntEnum], value: int) -> int:
    try:
        return int(kind(value))
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a {kind.__name__}") from None


def _reserved(name: str, raw: bytes) -> None:
    if any(raw):
        raise ValueError(f"{name} (reserved) must be zero, got {raw.hex().upper()}")


# -- SFI 0x15: issuer data ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IssuerData:
    """The application's public data (EF 0x15, 30 bytes)."""

    LENGTH = 30

    issuer_code: int  # the city's 6-digit administrative code, e.g. 330100
    serial: bytes  # application serial = card_serial(card_no), 10 bytes BCD
    start: date
    expiry: date
    category: int  # Category: the population group the card is priced for
    status: int = AppStatus.ACTIVE
    app_type: int = APP_TYPE_CITY_PASS
    app_version: int = APP_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.issuer_code, bool) or not isinstance(self.issuer_code, int) \
                or not 0 <= self.issuer_code <= 999999:
            raise ValueError(f"issuer code must be 6 digits, got {self.issuer_code!r}")
        _bcd("application serial", _length("application serial", self.serial, 10))
        _date_bcd("start date", self.start)
        _date_bcd("expiry date", self.expiry)
        if self.expiry < self.start:
            raise ValueError(f"expiry date {self.expiry} is before start date {self.start}")
        _enum("card category", Category, self.category)
        _enum("application status", AppStatus, self.status)
        _uint("application type", self.app_type, 1)
        _uint("application version", self.app_version, 1)

    @property
    def card_no(self) -> int:
        return int(self.serial.hex())

    @property
    def blocked(self) -> bool:
        return self.status == AppStatus.BLOCKED

    def encode(self) -> bytes:
        return (bytes.fromhex(f"{self.issuer_code:06d}") + bytes([self.app_type, self.app_version]) + self.serial
                + _date_bcd("start date", self.start) + _date_bcd("expiry date", self.expiry)
                + bytes([self.category, self.status]) + bytes(5))

    @classmethod
    def decode(cls, raw: bytes) -> "IssuerData":
        raw = _length("issuer data (EF 15)", raw, cls.LENGTH)
        _reserved("issuer data bytes 25..29", raw[25:30])
        return cls(_bcd("issuer code", raw[0:3]), raw[5:15], _bcd_date("start date", raw[15:19]),
                   _bcd_date("expiry date", raw[19:23]), _enum("card category", Category, raw[23]),
                   _enum("application status", AppStatus, raw[24]), raw[3], raw[4])


# -- SFI 0x16: holder data ------------------------------------------------------------------
ID_DIGEST_BYTES = 16


@dataclass(frozen=True, slots=True)
class HolderData:
    """The holder (EF 0x16, 24 bytes): no plain personal data. A validator offline needs only
    the category; the desk matches a presented ID document against the digest, and the last 4
    characters let a person read which document it was. A lost card so reveals no identity."""

    LENGTH = 24

    category: int  # Category of the holder
    id_type: int = IdType.NONE
    id_tail: str = ""  # the last 4 characters of the document number (ASCII), "" if anonymous
    id_digest: bytes = bytes(ID_DIGEST_BYTES)  # see id_digest(); zeros if anonymous

    def __post_init__(self) -> None:
        _enum("holder category", Category, self.category)
        _enum("ID document type", IdType, self.id_type)
        if not isinstance(self.id_tail, str) or len(self.id_tail) > 4 or not self.id_tail.isascii() \
                or not all(c.isalnum() for c in self.id_tail):
            raise ValueError(f"ID tail must be up to 4 ASCII letters or digits, got {self.id_tail!r}")
        _length("ID digest", self.id_digest, ID_DIGEST_BYTES)

    @classmethod
    def of_id(cls, category: int, id_type: int, id_number: str, serial: bytes) -> "HolderData":
        """The holder data of a registered card; the ID number itself is not kept."""
        if not id_number or not id_number.isascii():
            raise ValueError("ID number must be a non-empty ASCII string")
        return cls(category, id_type, id_number[-4:].upper(), id_digest(id_number, serial))

    def encode(self) -> bytes:
        return (bytes([self.category, self.id_type]) + self.id_tail.encode("ascii").ljust(4, b"\0")
                + self.id_digest + bytes(2))

    @classmethod
    def decode(cls, raw: bytes) -> "HolderData":
        raw = _length("holder data (EF 16)", raw, cls.LENGTH)
        _reserved("holder data bytes 22..23", raw[22:24])
        tail = raw[2:6].rstrip(b"\0")
        if b"\0" in tail:
            raise ValueError(f"ID tail has a zero byte inside: {raw[2:6].hex().upper()}")
        try:
            text = tail.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"ID tail must be ASCII, got {raw[2:6].hex().upper()}") from None
        return cls(_enum("holder category", Category, raw[0]), _enum("ID document type", IdType, raw[1]),
                   text, raw[6:22])


def id_digest(id_number: str, serial: bytes) -> bytes:
    """SHA-256(application serial || ID number, upper case ASCII), first 16 bytes. Salted by
    the serial, so two cards of one person do not carry the same digest."""
    return hashlib.sha256(bytes(serial) + id_number.upper().encode("ascii")).digest()[:ID_DIGEST_BYTES]


# -- SFI 0x17 record 1: the transit record ----------------------------------------------------
_ENTERED_KINDS = (0, int(TapKind.BIKE_RENT), int(TapKind.PARKING_ENTRY))


@dataclass(frozen=True, slots=True)
class Entered:
    """An open two-tap session: a bike rented (place = dock) or a car parked (place = lot)."""

    kind: int  # TapKind.BIKE_RENT or TapKind.PARKING_ENTRY
    place: int
    time_s: int  # epoch seconds of the entry tap
    deposit_fen: int = 0  # a bike rental's deposit held (3 bytes)


@dataclass(frozen=True, slots=True)
class TransitRecord:
    """What the fare rules need offline (record 1 of EF 0x17, 64 bytes). Times are epoch
    seconds on the card (CardState keeps ms; the card's seconds are the ms floored)."""

    LENGTH = 64

    recent: tuple[tuple[int, int], ...] = ()  # (terminal id, last charged tap, s), oldest first
    rides: tuple[tuple[int, int, int], ...] = ()  # (concession index, local day, rides)
    last_kind: int = 0  # the last tap's TapKind; 0 = none yet
    last_route: int = 0
    last_fare_fen: int = 0
    entered: Entered | None = None
    version: int = TRANSIT_FORMAT

    def __post_init__(self) -> None:
        if self.version != TRANSIT_FORMAT:
            raise ValueError(f"transit record format must be {TRANSIT_FORMAT:02X}, got {self.version!r}")
        if len(self.recent) > MAX_RECENT:
            raise ValueError(f"recent holds at most {MAX_RECENT} terminals, got {len(self.recent)}")
        for tid, t in self.recent:
            _uint("recent terminal id", tid, 4)
            _uint("recent tap time", t, 4)
        if len(self.rides) > MAX_RIDE_COUNTERS:
            raise ValueError(f"rides holds at most {MAX_RIDE_COUNTERS} counters, got {len(self.rides)}")
        for concession, day, n in self.rides:
            _uint("ride concession index", concession, 1)
            _uint("ride day", day, 2)
            _uint("ride count", n, 1)
        if self.last_kind:
            _enum("last tap kind", TapKind, self.last_kind)
        _uint("last route", self.last_route, 4)
        _uint("last fare", self.last_fare_fen, 4)
        e = self.entered
        if e is not None:
            if e.kind not in _ENTERED_KINDS[1:]:
                raise ValueError(f"entered kind must be BIKE_RENT or PARKING_ENTRY, got {e.kind!r}")
            _uint("entered place", e.place, 4)
            _uint("entered time", e.time_s, 4)
            _uint("entered deposit", e.deposit_fen, 3)

    def encode(self) -> bytes:
        recent = b"".join(_uint("", tid, 4) + _uint("", t, 4) for tid, t in self.recent)
        rides = b"".join(bytes([c]) + _uint("", d, 2) + bytes([n]) for c, d, n in self.rides)
        e = self.entered or Entered(0, 0, 0)
        return (bytes([self.version, len(self.recent)]) + recent.ljust(8 * MAX_RECENT, b"\0")
                + bytes([len(self.rides)]) + rides.ljust(4 * MAX_RIDE_COUNTERS, b"\0")
                + bytes([self.last_kind]) + _uint("", self.last_route, 4) + _uint("", self.last_fare_fen, 4)
                + bytes([e.kind]) + _uint("", e.place, 4) + _uint("", e.time_s, 4) + _uint("", e.deposit_fen, 3))

    @classmethod
    def decode(cls, raw: bytes) -> "TransitRecord":
        raw = _length("transit record (EF 17 record 1)", raw, cls.LENGTH)
        if raw[0] != TRANSIT_FORMAT:
            raise ValueError(f"transit record format byte must be {TRANSIT_FORMAT:02X}, got {raw[0]:02X}")
        n_recent, n_rides = raw[1], raw[34]
        if n_recent > MAX_RECENT:
            raise ValueError(f"transit record recent count must be 0..{MAX_RECENT}, got {n_recent}")
        if n_rides > MAX_RIDE_COUNTERS:
            raise ValueError(f"transit record ride counter count must be 0..{MAX_RIDE_COUNTERS}, got {n_rides}")
        _reserved("transit record unused recent slots", raw[2 + 8 * n_recent:34])
        _reserved("transit record unused ride slots", raw[35 + 4 * n_rides:43])
        recent = tuple((int.from_bytes(raw[i:i + 4], "big"), int.from_bytes(raw[i + 4:i + 8], "big"))
                       for i in range(2, 2 + 8 * n_recent, 8))
        rides = tuple((raw[i], int.from_bytes(raw[i + 1:i + 3], "big"), raw[i + 3])
                      for i in range(35, 35 + 4 * n_rides, 4))
        if raw[43] and raw[43] not in TapKind._value2member_map_:
            raise ValueError(f"transit record last tap kind {raw[43]} is not a TapKind")
        entered = None
        if raw[52] not in _ENTERED_KINDS:
            raise ValueError(f"transit record entered kind {raw[52]} is not BIKE_RENT or PARKING_ENTRY")
        if raw[52]:
            entered = Entered(raw[52], int.from_bytes(raw[53:57], "big"), int.from_bytes(raw[57:61], "big"),
                              int.from_bytes(raw[61:64], "big"))
        else:
            _reserved("transit record entered fields with no entered kind", raw[53:64])
        return cls(recent, rides, raw[43], int.from_bytes(raw[44:48], "big"), int.from_bytes(raw[48:52], "big"),
                   entered)

    # -- CardState mapping: what decide() reads and apply_effects() writes --------------------
    def to_card_state_fields(self) -> dict[str, object]:
        """``recent``, ``rides``, ``rental`` and ``parking`` as CardState keeps them (ms)."""
        rental = parking = None
        e = self.entered
        if e is not None and e.kind == TapKind.BIKE_RENT:
            rental = (e.place, e.time_s * MS_PER_S, e.deposit_fen)
        elif e is not None:
            parking = (e.place, e.time_s * MS_PER_S)
        return {"recent": {tid: t * MS_PER_S for tid, t in self.recent} or None,
                "rides": {(c, d): n for c, d, n in self.rides} or None,
                "rental": rental, "parking": parking}

    def apply_to(self, card: CardState) -> None:
        """Set a CardState's offline fields from this record (a validator, before decide())."""
        for name, value in self.to_card_state_fields().items():
            setattr(card, name, value)

    @classmethod
    def from_card_state(cls, card: CardState, last_kind: int = 0, last_route: int = 0,
                        last_fare_fen: int = 0) -> "TransitRecord":
        """The record to write back after apply_effects(): the newest 4 terminals, the newest 2
        ride counters (rides past 255 stay at 255), the one open two-tap session."""
        if card.rental is not None and card.parking is not None:
            raise ValueError("a card holds one open two-tap session: both a rental and a parking")
        recent = _recent(card.recent or {})
        rides = tuple(sorted(((c, d, min(n, 255)) for (c, d), n in (card.rides or {}).items()),
                             key=lambda r: (r[1], r[0]))[-MAX_RIDE_COUNTERS:])
        entered = None
        if card.rental is not None:
            dock, start_ms, deposit = card.rental
            entered = Entered(int(TapKind.BIKE_RENT), dock, start_ms // MS_PER_S, deposit)
        elif card.parking is not None:
            lot, entry_ms = card.parking
            entered = Entered(int(TapKind.PARKING_ENTRY), lot, entry_ms // MS_PER_S)
        return cls(recent, rides, last_kind, last_route, last_fare_fen, entered)


def _recent(recent: Mapping[int, int]) -> tuple[tuple[int, int], ...]:
    pairs = [(tid, t // MS_PER_S) for tid, t in recent.items()]  # CardState keeps charging order
    return tuple(pairs[-MAX_RECENT:])


# -- SFI 0x18: the transaction log ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LogEntry:
    """One PBOC transaction-log record (23 bytes)."""

    LENGTH = 23

    counter: int  # the offline (purchase) or online (load) counter before the transaction
    amount_fen: int
    transaction_type: int  # 02 load, 06 purchase, 09 compound purchase
    terminal_id: bytes  # 6 bytes
    date: bytes  # 4 bytes BCD YYYYMMDD
    time: bytes  # 3 bytes BCD HHMMSS
    overdraft_fen: int = 0  # the overdraft limit (3 bytes); the city pass has none

    def __post_init__(self) -> None:
        _uint("log counter", self.counter, 2)
        _uint("log overdraft limit", self.overdraft_fen, 3)
        _uint("log amount", self.amount_fen, 4)
        _uint("log transaction type", self.transaction_type, 1)
        _length("log terminal id", self.terminal_id, 6)
        _bcd("log date", _length("log date", self.date, 4))
        _bcd("log time", _length("log time", self.time, 3))

    def encode(self) -> bytes:
        return (self.counter.to_bytes(2, "big") + self.overdraft_fen.to_bytes(3, "big")
                + self.amount_fen.to_bytes(4, "big") + bytes([self.transaction_type]) + self.terminal_id
                + self.date + self.time)

    @classmethod
    def decode(cls, raw: bytes) -> "LogEntry":
        raw = _length("transaction log record (EF 18)", raw, cls.LENGTH)
        return cls(int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[5:9], "big"), raw[9], raw[10:16],
                   raw[16:20], raw[20:23], int.from_bytes(raw[2:5], "big"))


def log_append(log: tuple[LogEntry, ...], entry: LogEntry) -> tuple[LogEntry, ...]:
    """The cyclic log with ``entry`` as record 1; the oldest falls off past 10."""
    return (entry, *log)[:LOG_ENTRIES]


# -- personalisation ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CardImage:
    """Everything a new card holds: its keys, its files, its purse."""

    keys: CardKeys
    issuer: IssuerData
    holder: HolderData
    transit: TransitRecord
    balance_fen: int
    log: tuple[LogEntry, ...] = field(default=())
    offline_counter: int = 0
    online_counter: int = 0

    @property
    def card_no(self) -> int:
        return self.issuer.card_no


def personalise(issuer_keys: IssuerKeys, card_no: int, balance_fen: int, category: int, issuer_code: int,
                start: date, expiry: date, *, holder: HolderData | None = None,
                status: int = AppStatus.ACTIVE) -> CardImage:
    """A new card: keys diversified from the issuer's, the files written, the purse loaded with
    ``balance_fen`` (an opening balance, not a load: the log starts empty)."""
    _uint("balance_fen", balance_fen, 4)
    serial = card_serial(card_no)
    issuer = IssuerData(issuer_code, serial, start, expiry, _enum("card category", Category, category), status)
    return CardImage(issuer_keys.for_card(card_no), issuer, holder or HolderData(category), TransitRecord(),
                     balance_fen)
