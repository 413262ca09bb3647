"""Settlement inside a city, pure (issue 15 item 1; docs/settlement.md).

Per window and counterparty (an operator or a merchant) the card system owes the gross of the
taps charged on the counterparty's terminals, less the commission of its contract, which the
card system keeps. The commission is rounded DOWN to the fen (floor), once per line, as
netting.interchange_fen does: a fraction of a fen always stays with the counterparty, and
``commission_fen + net_fen == gross_fen`` exactly.

Windows go open -> closed -> settled. Closing a closed window is a no-op that answers the
lines already stored; closing a settled one is refused. Business outcomes are codes.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import IntEnum

from .cards import Category
from .money import percent_of_fen
from .tables import CompiledVersion, FareTables
from .taps import TapKind

BASIS_POINTS = 10_000
MS_PER_DAY = 86_400_000
MAX_ID_CHARS = 40
COUNTERPARTY_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")  # as the migration checks it
KINDS = ("operator", "merchant")
SUBSIDY_KINDS = frozenset((int(TapKind.BUS), int(TapKind.WATER_BUS)))  # fares with a concession table
CLOSE_GRACE_MS = 60_000  # a tap applied just before the end may still be in a group commit


class WindowState:
    OPEN = "open"
    CLOSED = "closed"
    SETTLED = "settled"


class SettleCode(IntEnum):
    OK = 0  # done now
    ALREADY = 1  # already in that state: nothing changed, the stored lines are the answer
    SETTLED_REFUSED = 2  # the window is settled: its lines are final, closing is refused
    NOT_CLOSED = 3  # settle asked of an open window
    NOT_ENDED = 4  # close asked before end_ms + CLOSE_GRACE_MS
    UNKNOWN_WINDOW = 5
    UNKNOWN_COUNTERPARTY = 6
    COUNTERPARTY_CONFLICT = 7  # the id is registered with other terms
    TERMINAL_TAKEN = 8  # the terminal is attached to another counterparty


def close_step(state: str, now_ms: int, end_ms: int) -> tuple[SettleCode, str]:
    """(code, state after) for a close asked at ``now_ms``."""
    if state == WindowState.SETTLED:
        return SettleCode.SETTLED_REFUSED, state
    if state == WindowState.CLOSED:
        return SettleCode.ALREADY, state
    if state != WindowState.OPEN:
        raise ValueError(f"not a window state: {state!r}")
    if now_ms < end_ms + CLOSE_GRACE_MS:
        return SettleCode.NOT_ENDED, state
    return SettleCode.OK, WindowState.CLOSED


def settle_step(state: str) -> tuple[SettleCode, str]:
    """(code, state after) for marking a window paid."""
    if state == WindowState.SETTLED:
        return SettleCode.ALREADY, state
    if state == WindowState.OPEN:
        return SettleCode.NOT_CLOSED, state
    if state != WindowState.CLOSED:
        raise ValueError(f"not a window state: {state!r}")
    return SettleCode.OK, WindowState.SETTLED


def commission_fen(gross_fen: int, commission_bp: int) -> int:
    """``commission_bp`` basis points of ``gross_fen``, rounded down: 1 234 567 fen at 150 bp
    is 18 518 fen (18 518.505 floored)."""
    if isinstance(gross_fen, bool) or not isinstance(gross_fen, int) or gross_fen < 0:
        raise ValueError(f"gross_fen must be a whole number of fen >= 0, got {gross_fen!r}")
    if isinstance(commission_bp, bool) or not isinstance(commission_bp, int) or not 0 <= commission_bp <= BASIS_POINTS:
        raise ValueError(f"commission_bp must be 0..{BASIS_POINTS}, got {commission_bp!r}")
    return gross_fen * commission_bp // BASIS_POINTS


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What the journal and the offline records hold for one counterparty in one window; the
    visitors' (other issuers' cards) apart: their online taps the issuer decided or this city
    stood in for, their offline sales kept for their issuer. The operator is owed them all."""

    counterparty_id: str
    online_taps: int = 0
    online_fen: int = 0
    offline_taps: int = 0
    offline_fen: int = 0
    visitor_online_taps: int = 0
    visitor_online_fen: int = 0
    visitor_offline_taps: int = 0
    visitor_offline_fen: int = 0


@dataclass(frozen=True, slots=True)
class Line:
    counterparty_id: str
    taps: int
    gross_fen: int
    commission_fen: int
    net_fen: int
    online_fen: int  # all online fen, the visitors' included
    offline_fen: int  # all offline fen, the visitors' included
    visitor_online_fen: int = 0  # of online_fen: other issuers' cards
    visitor_offline_fen: int = 0  # of offline_fen: other issuers' cards


_COUNTS = ("online_taps", "online_fen", "offline_taps", "offline_fen", "visitor_online_taps", "visitor_online_fen",
           "visitor_offline_taps", "visitor_offline_fen")


def line_of(agg: Aggregate, commission_bp: int) -> Line:
    for name in _COUNTS:
        if getattr(agg, name) < 0:
            raise ValueError(f"{name} must be >= 0 ({agg.counterparty_id})")
    online = agg.online_fen + agg.visitor_online_fen
    offline = agg.offline_fen + agg.visitor_offline_fen
    gross = online + offline
    fee = commission_fen(gross, commission_bp)
    taps = agg.online_taps + agg.offline_taps + agg.visitor_online_taps + agg.visitor_offline_taps
    return Line(agg.counterparty_id, taps, gross, fee, gross - fee, online, offline, agg.visitor_online_fen,
                agg.visitor_offline_fen)


def lines_of(aggregates: Iterable[Aggregate], commission_bp: Mapping[str, int]) -> list[Line]:
    """One line per counterparty of ``commission_bp`` (zeros when it had no taps), by id."""
    by_cp = {a.counterparty_id: a for a in aggregates}
    unknown = set(by_cp) - set(commission_bp)
    if unknown:
        raise ValueError(f"aggregates for unregistered counterparties: {sorted(unknown)}")
    return [line_of(by_cp.get(cp, Aggregate(cp)), commission_bp[cp]) for cp in sorted(commission_bp)]


def window_bounds(window_id: str, utc_offset_ms: int) -> tuple[int, int]:
    """[start_ms, end_ms) of the local day ``window_id`` (YYYY-MM-DD) at that UTC offset."""
    if len(window_id) != 10 or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", window_id):
        raise ValueError(f"a window is a day, YYYY-MM-DD; got {window_id[:20]!r}")
    try:
        day = date.fromisoformat(window_id)
    except ValueError:
        raise ValueError(f"not a date: {window_id!r}") from None
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000) - utc_offset_ms
    return start, start + MS_PER_DAY


def when_digits(time_ms: int, utc_offset_ms: int) -> int:
    """YYYYMMDDhhmmss local: the settlement files' ``when`` (as offline records carry it)."""
    t = datetime(1970, 1, 1) + timedelta(milliseconds=time_ms + utc_offset_ms)
    return int(t.strftime("%Y%m%d%H%M%S"))


def day_of(day_number: int) -> date:
    """The local date of a day number ((time_ms + offset) // MS_PER_DAY)."""
    return date(1970, 1, 1) + timedelta(days=day_number)


# -- the bus-subsidy basis ------------------------------------------------------------------
def full_fare_fen(ver: CompiledVersion, kind: int, route: int) -> int:
    """The adult card fare of a ride: what an ordinary card pays with no pass and no
    concession (bus: base x card_percent; water bus: base). The journal keeps what was charged,
    not the price before the concession, so this is the subsidy's reference price."""
    if kind == TapKind.BUS:
        b = ver.v.bus
        return percent_of_fen(ver.bus_base.get(route, b.default_base_fen), b.card_percent)
    if kind == TapKind.WATER_BUS:
        return int(ver.water_fen.get(route, ver.v.water_bus.default_fen))
    raise ValueError(f"no subsidy fare for kind {kind}")


@dataclass(frozen=True, slots=True)
class RideGroup:
    """Charged rides of one (counterparty, kind, route, category, day, fare version)."""

    counterparty_id: str
    kind: int
    route: int
    category: int
    day: int  # local day number
    fare_version: int  # 0: not known (offline records); the version at the window's start
    taps: int
    charged_fen: int


@dataclass(frozen=True, slots=True)
class SubsidyRow:
    counterparty_id: str
    kind: int
    route: int
    category: int
    day: int
    taps: int
    full_fen: int
    charged_fen: int
    concession_fen: int


def subsidy_basis(tables: FareTables, groups: Iterable[RideGroup], start_ms: int) -> list[SubsidyRow]:
    """Concession value per (counterparty, kind, route, category, day): bus and water-bus rides
    of the concession categories (not ADULT, not unknown cards), full fare x taps less what was
    charged, never below 0 (a pass can price under the concession). Versions are merged."""
    by_number = {v.version: v for v in tables.versions}
    default = tables.at(start_ms) or tables.versions[0]
    acc: dict[tuple[str, int, int, int, int], list[int]] = {}
    for g in groups:
        if g.kind not in SUBSIDY_KINDS or g.category <= int(Category.ADULT) or g.taps <= 0:
            continue
        ver = by_number.get(g.fare_version, default)
        full = full_fare_fen(ver, g.kind, g.route) * g.taps
        a = acc.setdefault((g.counterparty_id, g.kind, g.route, g.category, g.day), [0, 0, 0, 0])
        a[0] += g.taps
        a[1] += full
        a[2] += g.charged_fen
        a[3] += max(0, full - g.charged_fen)
    return [SubsidyRow(*k, *v) for k, v in sorted(acc.items())]
