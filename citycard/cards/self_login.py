"""Logging in to self-service: the card number, the holder's identity number and the PIN,
all three, so a stranger who knows only card numbers (they are sequential) can neither guess
PINs nor lock them.

Only a caller who names the holder's identity number gets a PIN try counted, learns the tries
left, or learns that the PIN is locked or not set; every other failure is the same 401 after
the same KDF work, whether the card exists or not. Failures are limited per source and per
card (cards/throttle.py) before anything is checked.
"""

import hmac

from ..domain.cards import CardStatus
from ..domain.results import Result
from ..persistence import holders
from . import pins, self_sessions
from .errors import NotAuthenticated, Refused
from .lookup import card
from .services import Services
from .throttle import Scope

WRONG = "the card number, identity number or PIN is wrong"
CHANNEL = "self/session"


def _same_identity(stored: str, given: str) -> bool:
    # the check character X may come in either case; compare in constant time
    return hmac.compare_digest(stored.upper().encode(), given.strip().upper().encode())


async def _failed(svc: Services, card_no: int, source: str, *, identity_wrong: bool) -> None:
    """Count a failure against the source, and against the card when the identity was wrong
    (wrong PINs with the right identity are bounded per card by the lockout already)."""
    await svc.throttle.failed(Scope.LOGIN_SOURCE, source)
    if identity_wrong:
        await svc.throttle.failed(Scope.LOGIN_CARD, str(card_no))


async def login(svc: Services, card_no: int, citizen_id: str, pin: str, source: str) -> self_sessions.Session:
    with pins.place(svc, source):  # first: a flooding source's surplus costs nothing more
        await svc.throttle.check(Scope.LOGIN_SOURCE, source)
        await svc.throttle.check(Scope.LOGIN_CARD, str(card_no))
        identity = await holders.identity_of_card(svc.pool, card_no)
        if identity is None or not _same_identity(identity[0], citizen_id):
            await pins.burn_like_a_check(svc)
            await _failed(svc, card_no, source, identity_wrong=True)
            raise NotAuthenticated(WRONG)
        try:
            await pins.check_placed(svc, card_no, pin, channel=CHANNEL)
        except pins.WrongPin:
            await _failed(svc, card_no, source, identity_wrong=False)
            raise
    if (await card(svc.shards, card_no)).status == CardStatus.CANCELLED:
        raise Refused(Result.CARD_CANCELLED)  # the holder, told after proving it: use the new card
    return await self_sessions.start(svc, card_no)


async def holder_card(svc: Services, token: str) -> int:
    """The card of a live session whose card is not cancelled (a lost card can still look)."""
    card_no = await self_sessions.card_of(svc, token)
    if (await card(svc.shards, card_no)).status == CardStatus.CANCELLED:
        raise Refused(Result.CARD_CANCELLED)
    return card_no
