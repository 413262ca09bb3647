"""The card-services application: one FastAPI app, OpenAPI at /openapi.json, docs at /docs."""

from fastapi import FastAPI

from . import errors
from .auth import TokenCache
from .context import ApiContext
from .routes import audit_log, cards, holders, money, pins, programmes, replace, selfservice

DESCRIPTION = """Card services of the citizen card: cardholders, cards and their applications,
loss reports, replacement, PINs, top-ups and refunds, history, disbursement programmes and a
self-service channel. Operators send `Authorization: Bearer <token>`; each token carries roles
(clerk, programme_admin, auditor, read_only). Money is integer fen. Every write is in the
audit log. Every money movement takes an idempotency key: a retry with the same key gets the
first answer and moves nothing again."""


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="citycard card services", version="1", description=DESCRIPTION)
    app.state.ctx = ctx
    app.state.tokens = TokenCache()
    app.state.insurance_categories = ctx.insurance_categories
    errors.install(app)
    for module in (holders, cards, replace, money, pins, selfservice, programmes, audit_log):
        app.include_router(module.router)

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
