"""HTTP errors: 401/403 for who, 404 unknown, 409 conflict with the reason, 422 bad input
(with the offending field), 503 when a shard does not answer in time."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..cards.errors import (
    Busy,
    CardServiceError,
    Conflict,
    Invalid,
    NotAuthenticated,
    NotFound,
    RateLimited,
    Refused,
    TooLarge,
    check_result,
)
from ..cards.pins import PinLocked, WrongPin
from ..errors import CityCardError
from ..persistence.programme_uploads import UploadUnreadable


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


class FieldProblem(BaseModel):
    field: str = Field(description="where: body.amount_fen, path.card_no, query.limit")
    msg: str


class ErrorBody(BaseModel):
    """Every error answer: a sentence, the offending field for bad input, and for a refused
    card operation the ledger's result code (``CARD_CANCELLED``, ``PURSE_LIMIT``, ...)."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="what is wrong, in a sentence")
    field: str | None = Field(None, description="422: the offending field, e.g. amount_fen or apps.insurance")
    result: str | None = Field(None, description="409/422 from a card operation: the result code")
    errors: list[FieldProblem] | None = Field(None, description="422 from validation: every problem found")


ERROR_STATUSES = {
    400: "a body that cannot be taken at all: JSON nested deeper than 32 levels",
    401: "no token, or an unknown or revoked one",
    403: "the token's roles do not grant this",
    404: "the cardholder, card or other thing named in the path does not exist",
    409: "a conflict with the current state, with the reason (and the result code)",
    413: "the body is larger than its limit (`api.max_body_bytes`, uploads `api.max_upload_bytes`)",
    422: "bad input: the offending field is named",
    423: "locked: too many wrong PINs",
    429: "too many failed tries from this source, to this card or with this token: retry after `Retry-After` seconds",
    503: "a shard, the database or Redis did not answer in time, or is busy: retry (money: with the same idempotency key)",
}


def error_response(status: int) -> dict[str, Any]:
    return {"model": ErrorBody, "description": ERROR_STATUSES[status]}


def raise_for_result(result: int, card_no: int) -> None:
    """Map a refused op to its HTTP error (through the card services' errors); OK returns."""
    check_result(result, card_no)


def card_service_error(exc: CardServiceError) -> JSONResponse:
    """404 for nothing found, 422 for bad input (with its field) or an op the card cannot take,
    409 for a conflict with the card's state (with the result code)."""
    if isinstance(exc, NotFound):
        return JSONResponse({"error": str(exc)}, status_code=404)
    if isinstance(exc, WrongPin):
        return JSONResponse({"error": str(exc), "tries_left": exc.tries_left}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, NotAuthenticated):
        return JSONResponse({"error": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, PinLocked):
        return JSONResponse({"error": str(exc), "tries_left": 0}, status_code=423)
    if isinstance(exc, RateLimited):
        return JSONResponse({"error": str(exc), "retry_after_s": exc.retry_after_s}, status_code=429,
                            headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, Busy):
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, TooLarge):
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=413)
    if isinstance(exc, Invalid):
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=422)
    if isinstance(exc, Conflict):
        body = {"error": str(exc), **({"result": exc.result} if exc.result else {}), **exc.extra}
        return JSONResponse(body, status_code=409)
    if isinstance(exc, Refused):
        return JSONResponse({"error": str(exc), "result": exc.result.name}, status_code=409 if exc.conflict else 422)
    return JSONResponse({"error": str(exc)}, status_code=409)


def _refusal(request: Request, exc: CardServiceError) -> tuple[str, str] | None:
    """(status, why) of an answer that refuses a caller, for the operators' metrics: a flood,
    a guessing run or a full gate shows there first."""
    if isinstance(exc, RateLimited):
        return "429", exc.reason
    if isinstance(exc, Busy):
        return "503", "busy"
    if isinstance(exc, PinLocked):
        return "423", "pin_locked"
    if isinstance(exc, WrongPin):
        return "401", "wrong_pin"
    if isinstance(exc, NotAuthenticated):
        return "401", "wrong_login" if request.url.path == "/self/session" else "no_session"
    return None


def _field_of(error: Any) -> str:
    """The offending field as a client names it: ``amount_fen``, ``apps.insurance``, ``card_no``;
    ``body`` for a body that is not JSON at all."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        return "body"
    name = ".".join(str(p) for p in loc if p not in ("body", "query", "path", "header"))
    return name or (str(loc[0]) if loc else "request")


def _msg(error: Any) -> str:
    return str(error["msg"]).removeprefix("Value error, ")  # our validators' own sentences


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own 404 (no such path) and 405, in the same shape as every other error;
        # FastAPI's 400 for a body it cannot parse (not UTF-8, say) is bad input like any other
        if exc.status_code == 400:
            return JSONResponse({"error": f"body: {exc.detail}", "field": "body"}, status_code=422)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors() or [{"loc": (), "msg": "invalid request"}]
        field = _field_of(errors[0])
        return JSONResponse({"error": f"{field}: {_msg(errors[0])}", "field": field,
                             "errors": [{"field": ".".join(str(p) for p in e["loc"]), "msg": _msg(e)}
                                        for e in errors]}, status_code=422)

    @app.exception_handler(CardServiceError)
    async def _card_service(request: Request, exc: CardServiceError) -> JSONResponse:
        refusal = _refusal(request, exc)
        metrics = getattr(request.app.state.ctx, "metrics", None)
        if refusal is not None and metrics is not None:
            metrics.api_refusals.labels(*refusal).inc()
        return card_service_error(exc)

    # ShardUnavailable, the database's and Redis's transients and the last resort: unavailable.py
    @app.exception_handler(TimeoutError)
    async def _timeout(request: Request, exc: TimeoutError) -> JSONResponse:
        return JSONResponse({"error": "a shard did not answer in time; retry with the same idempotency key"},
                            status_code=503, headers={"Retry-After": "1"})


def install_upload_errors(app: FastAPI) -> None:
    @app.exception_handler(UploadUnreadable)
    async def _unreadable(request: Request, exc: UploadUnreadable) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)
