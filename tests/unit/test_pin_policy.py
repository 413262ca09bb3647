"""Weak PINs: refused at set, reset and change."""

from datetime import date

import pytest

from citycard.cards.pin_policy import weak_reason

BORN = date(1987, 3, 9)
CITIZEN = "33010619870309123X"  # ends in a check letter: its six digits before it count


@pytest.mark.parametrize("pin", ["000000", "111111", "999999", "123456", "012345", "456789", "654321",
                                 "987654", "890123", "121212", "909090", "123123", "870309", "090387",
                                 "030987", "198703", "031987", "309123"])
def test_easy_pins_are_refused(pin: str) -> None:
    assert weak_reason(pin, BORN, CITIZEN) is not None, pin


@pytest.mark.parametrize("pin", ["482913", "735160", "905218", "271828", "120490", "030912"])
def test_ordinary_pins_pass(pin: str) -> None:
    assert weak_reason(pin, BORN, CITIZEN) is None


def test_birthday_and_identity_rules_need_the_holder() -> None:
    assert weak_reason("870309") is None  # a card with no holder on file: only the generic rules
    assert weak_reason("870309", BORN) is not None
    assert weak_reason("091230", None, "330106198703091230") is not None  # the last six digits
    assert weak_reason("091230", None, "330106198703091239") is None
