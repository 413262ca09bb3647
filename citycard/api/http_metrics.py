"""Requests and latency of the card-services API, by route template (``/cards/{card_no}``,
never the raw path: the label set stays bounded), method and status. A plain ASGI wrapper:
no body is read or copied."""

import time
from typing import Any

from ..gateway.metrics import Metrics

UNMATCHED = "unmatched"  # no route: 404s of scanners and typos share one label
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes is answered 500 by the outer layer

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")  # FastAPI puts the matched route in the scope
            path = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "") if scope.get("method") in _METHODS else "other"
            self.metrics.http_requests.labels(path, method, str(status)).inc()
            self.metrics.http_latency.labels(path, method).observe(time.perf_counter() - started)


__all__ = ["HttpMetrics"]
