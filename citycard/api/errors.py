"""HTTP errors: 401/403 for who, 404 unknown, 409 conflict with the reason, 422 bad input
(with the offending field), 503 when a shard does not answer in time."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..domain.results import Result
from ..errors import CityCardError


class ApiError(CityCardError):
    def __init__(self, status: int, reason: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.reason}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


# Op results that are the caller's conflict with the card's state, not bad input.
_CONFLICT = {
    Result.CARD_CANCELLED: "the card is cancelled or replaced",
    Result.CARD_BLOCKED: "the card is blocked (reported lost)",
    Result.INSUFFICIENT_FUNDS: "the purse holds less than the amount",
    Result.PURSE_LIMIT: "the top-up would take the purse over its cap",
    Result.RENTAL_OPEN: "a bike rental is open on the card: return the bike first",
    Result.PARKING_SESSION_OPEN: "a parking session is open on the card: exit first",
    Result.DUPLICATE_SEQ: "the idempotency key was already used for a different request",
}


def raise_for_result(result: int, card_no: int) -> None:
    """Map a refused op to its HTTP error; OK returns."""
    if result == Result.OK:
        return
    r = Result(result)
    if r == Result.CARD_UNKNOWN:
        raise ApiError(404, f"card {card_no} not found")
    if r in _CONFLICT:
        raise ApiError(409, _CONFLICT[r], result=r.name)
    raise ApiError(422, f"refused: {r.name}", result=r.name)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        return JSONResponse({"error": f"{field or 'request'}: {first['msg']}", "field": field or None,
                             "errors": [{"field": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
                                        for e in errors]}, status_code=422)

    @app.exception_handler(TimeoutError)
    async def _timeout(request: Request, exc: TimeoutError) -> JSONResponse:
        return JSONResponse({"error": "a shard did not answer in time; retry with the same idempotency key"},
                            status_code=503)
