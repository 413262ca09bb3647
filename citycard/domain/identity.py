"""Resident identity numbers (GB 11643): 17 digits and an ISO 7064 MOD 11-2 check character."""

from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def citizen_check_char(first17: str) -> str:
    return _CHECK[sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def citizen_id_problem(citizen_id: str, birth_date: date | None = None) -> str | None:
    """Why ``citizen_id`` is not a valid identity number (None if it is). With ``birth_date``,
    the date inside the number must match it."""
    if len(citizen_id) != 18 or not (citizen_id[:17].isascii() and citizen_id[:17].isdigit()):
        return "must be 17 digits and a check character"
    if citizen_id[17] != citizen_check_char(citizen_id[:17]):
        return "check character does not match"
    try:
        born = date(int(citizen_id[6:10]), int(citizen_id[10:12]), int(citizen_id[12:14]))
    except ValueError:
        return "holds no valid birth date"
    if birth_date is not None and born != birth_date:
        return f"its birth date {born.isoformat()} differs from birth_date"
    return None


def make_citizen_id(area: int, born: date, serial: int) -> str:
    """A valid number (for tests and demo data): 6-digit area, birth date, 3-digit serial."""
    first17 = f"{area:06d}{born:%Y%m%d}{serial:03d}"
    return first17 + citizen_check_char(first17)
