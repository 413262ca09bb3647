"""What a card service refuses, as values the API maps to its JSON error shape (404, 409,
422). Broken infrastructure (a shard past its deadline, Postgres away) is not here."""

from ..domain.results import Result
from ..errors import CityCardError

# Op results that are the caller's conflict with the card's state, not bad input.
CONFLICTS = {
    Result.CARD_CANCELLED: "the card is cancelled or replaced",
    Result.CARD_BLOCKED: "the card is blocked (reported lost)",
    Result.INSUFFICIENT_FUNDS: "the purse holds less than the amount",
    Result.PURSE_LIMIT: "the top-up would take the purse over its cap",
    Result.RENTAL_OPEN: "a bike rental is open on the card: return the bike first",
    Result.PARKING_SESSION_OPEN: "a parking session is open on the card: exit first",
    Result.DUPLICATE_SEQ: "the idempotency key was already used for a different request",
}


class CardServiceError(CityCardError):
    """A card service refused the request; the message says why, in a sentence."""


class NotFound(CardServiceError):
    """The card (or other thing) named does not exist."""


class Invalid(CardServiceError):
    """Bad input that the request's types could not catch; ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class Conflict(CardServiceError):
    """The request conflicts with the record (a live card already, a replacement still open);
    ``result`` names the case for a client, ``extra`` carries what it needs to act."""

    def __init__(self, message: str, result: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.result = result
        self.extra = extra


class Refused(CardServiceError):
    """The card's shard refused the op with ``result``: a conflict with the card's state
    (CONFLICTS) or an op it cannot apply."""

    def __init__(self, result: Result) -> None:
        super().__init__(CONFLICTS.get(result, f"refused: {result.name}"))
        self.result = result

    @property
    def conflict(self) -> bool:
        return self.result in CONFLICTS



class TooLarge(CardServiceError):
    """The request is more than the service takes at once (a list too long): split it.
    ``field`` names the part."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class Busy(CardServiceError):
    """The service is doing as much as it is allowed to at once (runs in progress): retry later."""

    retry_after_s = 1


class NotAuthenticated(CardServiceError):
    """No credential, or not a valid one (401); the message never says which part was wrong."""


class RateLimited(CardServiceError):
    """The caller (a source, a card, a token) used up an allowance: retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int, reason: str = "limit") -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)
        self.reason = reason  # which allowance, for the operators' metrics


def check_result(result: int, card_no: int) -> None:
    """Raise for a refused op; OK returns."""
    if result == Result.OK:
        return
    r = Result(result)
    if r == Result.CARD_UNKNOWN:
        raise NotFound(f"card {card_no} not found")
    raise Refused(r)
