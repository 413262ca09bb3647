"""The one result-code enum every tap is answered with. Values are wire-stable: append only."""

from enum import IntEnum


class Result(IntEnum):
    OK = 0  # applied; fare_fen charged (may be 0)
    INSUFFICIENT_FUNDS = 1  # purse below the fare; nothing charged
    CARD_BLOCKED = 2  # hotlisted (reported lost / blocked); nothing charged
    CARD_UNKNOWN = 3  # no such card in the system
    CARD_CANCELLED = 4  # card was cancelled or replaced
    DUPLICATE_SEQ = 5  # (terminal, seq) already used for a different tap; nothing charged
    SEQ_TOO_OLD = 6  # seq older than the retry window; outcome unknown here, nothing charged
    BAD_TAP = 7  # a field is out of range (amount, kind, route); nothing charged
    KIND_NOT_SUPPORTED = 8  # tap kind not priced by the fare table in force
    BUSY = 9  # overloaded, tap NOT processed; retry later with the same seq
    RETRY = 10  # outcome not known (shard restarting); retry later with the same seq
    PASSBACK = 11  # same card on the same terminal within the anti-passback window; not charged
    RENTAL_OPEN = 12  # bike rent while a rental is already open
    NO_OPEN_RENTAL = 13  # bike return with no open rental
    PARKING_SESSION_OPEN = 14  # parking entry while a session is already open
    NO_PARKING_SESSION = 15  # parking exit with no open session
    APP_NOT_ENABLED = 16  # the application (library, health insurance) is not enabled on the card
    PASS_REQUIRED = 17  # the gate admits valid annual-pass holders only
    ISSUER_NOT_ACCEPTED = 18  # a card of another issuer the table does not accept
    NO_FARE_TABLE = 19  # no fare table version in force at the tap's time
    PURSE_LIMIT = 20  # a top-up would take the purse over its cap; nothing credited


# Outcomes decided by a shard and written to the journal. BUSY and RETRY are gateway answers
# that promise nothing was decided, so a retry with the same seq is safe.
DECIDED = frozenset(r for r in Result if r not in (Result.BUSY, Result.RETRY, Result.SEQ_TOO_OLD))
