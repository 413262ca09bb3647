"""The reader pool's errors: one root under ``CityCardError``, one class per thing a caller
handles differently."""

from ..errors import CityCardError


class ReaderPoolError(CityCardError):
    """Root of the reader pool's errors. ``reader`` names the reader, when there is one."""

    def __init__(self, message: str, reader: str | None = None) -> None:
        super().__init__(message)
        self.reader = reader


class PcscUnavailable(ReaderPoolError):
    """No PC/SC service to ask (pcscd not running or not installed)."""


class ReaderGone(ReaderPoolError):
    """The reader is not attached (never was, or was unplugged, or pcscd dropped it)."""


class NoCard(ReaderPoolError):
    """No card came into the reader within the time asked."""


class CardRemoved(ReaderPoolError):
    """The card this session was opened on left the reader (pulled, possibly mid-APDU, or
    swapped for another card). Whether a command sent just before reached the card is unknown:
    the caller recovers as for a torn transaction."""


class ApduTimeout(ReaderPoolError):
    """The card or reader did not answer within the timeout. The reader's worker thread, stuck
    in pyscard, was abandoned and a fresh one took its place (see ``ReaderPool``)."""


class ReaderError(ReaderPoolError):
    """The reader or PC/SC failed in another way; the message says how (the PC/SC error text)."""


class ReaderBusy(ReaderError):
    """The reader's command queue is full (``queue_depth``); nothing was sent."""


class BadResponse(ReaderError):
    """The card answered something that is not a response APDU (e.g. 1 byte, no status word).
    ``raw`` holds what it sent."""

    def __init__(self, message: str, reader: str | None = None, raw: bytes = b"") -> None:
        super().__init__(message, reader)
        self.raw = raw
