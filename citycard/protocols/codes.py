"""Protocol error codes, sent in ``error`` messages. Values are wire-stable: append only."""

from enum import IntEnum


class ErrorCode(IntEnum):
    BAD_FRAME = 1  # length prefix of 0; connection closed
    FRAME_TOO_LARGE = 2  # length prefix above the limit; connection closed
    BAD_MESSAGE = 3  # body is not valid MessagePack or breaks the message schema
    UNKNOWN_MESSAGE = 4  # a map whose "t" names no message we know
    NOT_AUTHENTICATED = 5  # taps, params or ping before auth_ok
    AUTH_FAILED = 6  # wrong MAC; connection closed
    UNKNOWN_TERMINAL = 7  # terminal id not registered; connection closed
    TERMINAL_DISABLED = 8  # terminal registered but disabled; connection closed
    AUTH_REPLAY = 9  # a terminal nonce already used; connection closed
    UNEXPECTED_MESSAGE = 10  # valid message in the wrong state (e.g. a second hello)
    UNSUPPORTED_VERSION = 11  # protocol version not served; connection closed
    TOO_MANY_ERRORS = 12  # too many bad messages on one connection; connection closed
    AUTH_TIMEOUT = 13  # no completed authentication in time; connection closed
    INTERNAL = 14  # server-side failure; the request was not processed
    BAD_BATCH_MAC = 15  # an offline batch whose MAC does not check: nothing journaled; not fatal
    BATCH_SEQ_REUSED = 16  # an offline batch_seq already answered for other records: nothing journaled


# Errors after which the server closes the connection.
FATAL = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.AUTH_FAILED,
        ErrorCode.UNKNOWN_TERMINAL,
        ErrorCode.TERMINAL_DISABLED,
        ErrorCode.AUTH_REPLAY,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.TOO_MANY_ERRORS,
        ErrorCode.AUTH_TIMEOUT,
    }
)


# The per-record codes of an offline_ack (section 15.3) are the host's decisions: defined with them.
from ..domain.offline_book import OFFLINE_HOTLISTS, OfflineCode  # noqa: E402

__all__ = ["FATAL", "OFFLINE_HOTLISTS", "ErrorCode", "OfflineCode"]
