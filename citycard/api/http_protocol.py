"""uvicorn's HTTP/1.1 protocol (h11), but a request it cannot take is answered in the API's
error shape: uvicorn answers a path, query or header past its limit, or a request that is not
HTTP, with a plain-text 400 before any route runs."""

import json

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

DEFAULT_HEAD_BYTES = 16 * 1024  # h11's own limit when none is given
LINGER_S = 1.0  # how long the rest of a refused request is read and dropped before closing


def head_problem(buffered: bytes, max_head_bytes: int) -> tuple[int, dict[str, str]]:
    """The status and error body for a request head h11 refused, judged from what it buffered:
    no line end within the limit is a request line (path and query) too long (414), a head
    past the limit is too many header bytes (431), anything else is not HTTP (400)."""
    if len(buffered) > max_head_bytes:
        if b"\n" not in buffered[:max_head_bytes]:
            return 414, {"error": f"path: the request line is longer than {max_head_bytes} bytes", "field": "path"}
        return 431, {"error": f"headers: request line and headers are longer than {max_head_bytes} bytes",
                     "field": "headers"}
    return 400, {"error": "request: not a valid HTTP/1.1 request", "field": "request"}


class JsonErrorH11Protocol(H11Protocol):
    """Pass as ``uvicorn.Config(http=JsonErrorH11Protocol, h11_max_incomplete_event_size=...)``."""

    _draining = False

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_HEAD_BYTES
        status, body = head_problem(self.conn.trailing_data[0], limit)
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
                      h11.Data(data=data), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self._drain_then_close()

    def _drain_then_close(self) -> None:
        """Close only once the client has stopped sending (or after LINGER_S): closing with its
        bytes unread would send a reset, and the client could lose the answer with it."""
        self._draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # the rest of the refused request
        super().data_received(data)

    def eof_received(self) -> None:
        if self._draining:
            self.transport.close()
            return
        super().eof_received()
