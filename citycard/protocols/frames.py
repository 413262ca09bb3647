"""Framing: a 4-byte big-endian body length, then the MessagePack body."""

from ..errors import RemoteProtocolError
from .codes import ErrorCode

HEADER_BYTES = 4
DEFAULT_MAX_FRAME_BYTES = 256 * 1024


def encode_frame(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER_BYTES, "big") + body


class FrameDecoder:
    """Feed bytes in any chunking; get whole frame bodies out.

    An oversized or zero length raises at once, from the header alone, so a peer cannot make
    us buffer more than ``max_frame_bytes`` + one read; the buffer is dropped when it does.
    ``max_frame_bytes`` may be changed between feeds (ServerConnection raises it at READY).
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self.max_frame_bytes = max_frame_bytes

    def feed(self, data: bytes) -> list[bytes]:
        bodies, error = self.feed_partial(data)
        if error is not None:
            raise error
        return bodies

    def feed_partial(self, data: bytes) -> tuple[list[bytes], RemoteProtocolError | None]:
        """The whole frames before a bad header too, and the error (None: none), so a peer's
        requests that came before its framing error are still answered, in order."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_BYTES:
            size = int.from_bytes(buf[pos : pos + HEADER_BYTES], "big")
            if size == 0:
                buf.clear()  # out of sync for good: keep nothing while the connection closes
                return out, RemoteProtocolError("zero-length frame", ErrorCode.BAD_FRAME)
            if size > self.max_frame_bytes:
                buf.clear()
                return out, RemoteProtocolError(
                    f"frame of {size} bytes exceeds the {self.max_frame_bytes}-byte limit",
                    ErrorCode.FRAME_TOO_LARGE,
                )
            if end - pos - HEADER_BYTES < size:
                break
            start = pos + HEADER_BYTES
            out.append(bytes(buf[start : start + size]))
            pos = start + size
        if pos:
            del buf[:pos]
        return out, None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)
