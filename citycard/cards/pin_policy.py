"""Which PINs are too easy to guess: refused when a PIN is set, reset or changed. Pure.

A 6-digit PIN has a million values, but people choose a few thousand of them: repeated
digits, runs, repeated pairs and triples, and their own birthday or the end of their identity
number, which anyone holding their wallet can read.
"""

from datetime import date


def _runs() -> frozenset[str]:
    up = "0123456789012345"
    down = up[::-1]
    return frozenset(s[i:i + 6] for s in (up, down) for i in range(10))


_RUNS = _runs()


def _date_forms(born: date) -> set[str]:
    """The 6-digit ways of writing a date of birth: YYMMDD, DDMMYY, MMDDYY, YYYYMM, MMYYYY."""
    y4, m, d = f"{born.year:04d}", f"{born.month:02d}", f"{born.day:02d}"
    y2 = y4[2:]
    return {y2 + m + d, d + m + y2, m + d + y2, y4 + m, m + y4}


def weak_reason(pin: str, birth_date: date | None = None, citizen_id: str | None = None) -> str | None:
    """Why ``pin`` is too easy to guess, in a sentence; None when it is not. ``pin`` is 6 digits."""
    if len(set(pin)) == 1:
        return "a PIN of one repeated digit is too easy to guess"
    if pin in _RUNS:
        return "a run of consecutive digits is too easy to guess"
    if pin[:2] * 3 == pin or pin[:3] * 2 == pin:
        return "a repeated pair or triple of digits is too easy to guess"
    if birth_date is not None and pin in _date_forms(birth_date):
        return "a PIN made of the holder's date of birth is too easy to guess"
    if citizen_id is not None and citizen_id[-7:-1].isdigit() and pin in (citizen_id[-6:], citizen_id[-7:-1]):
        return "a PIN made of the end of the holder's identity number is too easy to guess"
    return None
