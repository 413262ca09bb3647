"""Read-only reports over the journal for operators and departments."""

from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

from ..domain.results import Result
from ..domain.taps import TapKind

MS_PER_DAY = 86_400_000
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class ParkDay:
    park_id: int
    day: date  # local day of the entries, in the city's UTC offset
    visitors: int  # admitted entries (an annual-pass holder may enter many times)
    cards: int  # distinct cards among them


def day_start_ms(day: date, utc_offset_ms: int) -> int:
    """Epoch ms at local midnight starting ``day``."""
    return (day - _EPOCH).days * MS_PER_DAY - utc_offset_ms


async def park_visitors(conn: asyncpg.Connection, utc_offset_ms: int, day: date | None = None) -> list[ParkDay]:
    """Admitted park entries (PARK_ENTRY taps with result OK) per park per local day.

    ``utc_offset_ms`` is the city's offset (Hangzhou: +08:00); ``day`` limits the report to one
    local day. Ordered by day, then park.
    """
    where = "kind = $1 AND result = $2"
    args: list[int] = [int(TapKind.PARK_ENTRY), int(Result.OK), utc_offset_ms]
    if day is not None:
        start = day_start_ms(day, utc_offset_ms)
        where += " AND tap_time_ms >= $4 AND tap_time_ms < $5"
        args += [start, start + MS_PER_DAY]
    rows = await conn.fetch(
        "SELECT route, floor((tap_time_ms + $3)::numeric / 86400000)::bigint AS day,"
        " count(*) AS visitors, count(DISTINCT card_no) AS cards"
        f" FROM journal WHERE {where} GROUP BY 1, 2 ORDER BY 2, 1",
        *args,
    )
    return [ParkDay(r["route"], _EPOCH + timedelta(days=r["day"]), r["visitors"], r["cards"]) for r in rows]
