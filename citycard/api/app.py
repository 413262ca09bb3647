"""The card-services application: one FastAPI app, OpenAPI at /openapi.json, docs at /docs."""

import json
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from . import errors, unavailable
from .auth import BEARER_SCHEME, TokenCache
from .context import ApiContext
from .health import health as health_check
from .http_metrics import HttpMetrics
from .readiness import Readiness
from .routes import (
    audit_log,
    cards,
    holders,
    merchants,
    money,
    pins,
    programmes,
    purse,
    replace,
    selfservice,
)
from .strict_route import InputLimits, StrictRoute

DESCRIPTION = """Card services of the citizen card: cardholders, cards and their applications,
loss reports, replacement, PINs, top-ups and refunds, history, disbursement programmes and a
self-service channel. Operators send `Authorization: Bearer <token>`; each token carries roles
(clerk, programme_admin, auditor, read_only, payment, merchant_desk). Money is integer fen. Every write is in the
audit log. Every money movement takes an idempotency key: a retry with the same key gets the
first answer and moves nothing again. Every error is JSON in one shape,
`{"error": "a sentence", "field": "the offending field, for bad input"}` (docs/api.md)."""


def create_app(ctx: ApiContext) -> FastAPI:
    # Swagger UI's and ReDoc's assets served by the platform (/static-offline-docs), not a CDN:
    # /docs must work on a network with no way out
    app = FastAPIOffline(title="citycard card services", version="1", description=DESCRIPTION)
    app.state.ctx = ctx
    app.state.tokens = TokenCache()
    app.state.insurance_categories = ctx.insurance_categories
    api = ctx.settings.api
    app.state.input_limits = InputLimits(max_body_bytes=api.max_body_bytes, max_upload_bytes=api.max_upload_bytes)
    errors.install(app)
    errors.install_upload_errors(app)
    unavailable.install(app)  # 503 for a busy or absent database or Redis; 500 with a request id
    if ctx.metrics is not None:
        app.add_middleware(HttpMetrics, metrics=ctx.metrics)
    for module in (holders, cards, replace, money, purse, pins, selfservice, programmes, merchants, audit_log):
        _check_strict(module.router)
        app.include_router(module.router)

    @app.get("/health", tags=["operations"], responses={503: {"description": "Postgres does not answer"}})
    async def health() -> JSONResponse:
        """Postgres and Redis checked now: 200 `ok` (or `degraded`: Redis down), 503 when
        Postgres does not answer (`citycard/api/health.py`)."""
        return await health_check(ctx.pool, ctx.redis)

    readiness = app.state.readiness = Readiness(ctx.pool, ctx.redis, ctx.shards)

    @app.get("/health/live", tags=["operations"])
    async def live() -> JSONResponse:
        """The process answers; nothing else is asked (restart it only when this fails)."""
        return JSONResponse({"status": "live"})

    @app.get("/health/ready", tags=["operations"],
             responses={503: {"description": "Postgres, Redis or a shard is not ready; `not_ready` names them"}})
    async def ready() -> JSONResponse:
        """Postgres, Redis and every account shard, each within 2 s; the answer is kept 1 s and
        shared by concurrent callers (`citycard/api/readiness.py`). 200 when all are `ok`."""
        body = await readiness.answer()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            app.openapi_schema = document_errors(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _check_strict(router: APIRouter) -> None:
    """Every route checks the caller before the body, and bounds the body: a router made
    without ``route_class=StrictRoute`` would silently lose both."""
    loose = [r.path for r in router.routes if isinstance(r, APIRoute) and not isinstance(r, StrictRoute)]
    if loose:
        raise TypeError(f"routes not made with route_class=StrictRoute: {loose}")


_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def document_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Declare the error answers each operation can give, all in the one error shape (an
    operation's own declarations win, except FastAPI's default 422, which is not our shape):
    401 and 503 where a credential is needed, 403 where roles decide, 404 where the path names
    a thing, 409 for writes, 422 for input."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    body = errors.ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(body.pop("$defs", {}))
    schemas["ErrorBody"] = body
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for item in doc.get("paths", {}).values():
        for method, op in item.items():
            if method not in _HTTP_METHODS:
                continue
            security = {name for req in op.get("security", []) for name in req}
            params = op.get("parameters", [])
            statuses: set[int] = set()
            if security:
                statuses |= {401, 503}
            if BEARER_SCHEME in security:
                statuses.add(403)
            if any(p.get("in") == "path" for p in params):
                statuses.add(404)
            if method not in ("get", "head"):
                statuses.add(409)
            if params or "requestBody" in op:
                statuses.add(422)
            if "requestBody" in op:
                statuses |= {400, 413}  # JSON nested too deep; a body over its size limit
            responses = op.setdefault("responses", {})
            default_422 = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema")
            if default_422 == {"$ref": "#/components/schemas/HTTPValidationError"}:
                del responses["422"]
            for status in sorted(statuses):
                responses.setdefault(str(status), {"description": errors.ERROR_STATUSES[status]})
            for status, response in responses.items():
                if status.startswith(("4", "5")) and "content" not in response:
                    response.update(ref)
    if "#/components/schemas/HTTPValidationError" not in json.dumps(doc["paths"]):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return doc
