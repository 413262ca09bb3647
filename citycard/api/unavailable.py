"""The answers for a database or Redis that is busy or away, and for a defect.

Busy or away (a dropped or refused connection, a serialization failure, a deadlock, too many
connections, a statement timeout, a server shutting down, Redis unreachable): 503 with
``Retry-After``. Retrying is safe: the failed statement's transaction was rolled back, and a
money operation retried with the same idempotency key gets the first answer, never a second
movement. A statement timeout (``QueryCanceledError``) is one of these: the database did not
answer in time, like a shard that does not (docs/api.md, "Errors").

Not transient, so 500 and an error in the log: a shard whose journal head was moved by another
writer (a second platform on the same schema, which the state lock is there to prevent), and
any exception no handler knows. A 500 carries a request id that its log line carries too.
"""

import logging
import re
import uuid
from typing import Any

import asyncpg
import redis.exceptions as redis_errors
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..actors.shard_client import ShardUnavailable
from ..errors import JournalHeadMoved

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
SHARD_503 = "a shard did not answer in time; retry with the same idempotency key"

# each answers "try again shortly", never "your request is wrong" (SQLSTATE classes 08, 40, 53, 57, 55P03)
TRANSIENT_DB: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # 08: dropped, refused, never established
    asyncpg.TransactionRollbackError,  # 40: serialization failure, deadlock
    asyncpg.InsufficientResourcesError,  # 53: too many connections, out of memory, disk full
    asyncpg.OperatorInterventionError,  # 57: statement timeout, admin shutdown, cannot connect now
    asyncpg.LockNotAvailableError,  # 55P03: lock_timeout
    ConnectionError,  # the socket: refused, reset, broken pipe
)
TRANSIENT_REDIS: tuple[type[BaseException], ...] = (redis_errors.ConnectionError, redis_errors.TimeoutError)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when it is a plain token, else a new one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


def _answer_503(what: str, exc: BaseException) -> JSONResponse:
    body = {"error": f"{what} is busy or unreachable ({type(exc).__name__}); retry is safe: nothing was "
                     "changed, and a money operation retried with the same idempotency key moves nothing twice",
            "retry_after_s": RETRY_AFTER_S}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _defect(request: Request, exc: BaseException, why: str) -> JSONResponse:
    rid = request_id(request)
    log.error("%s on %s %s [request %s]", why, request.method, request.url.path, rid, exc_info=exc)
    return JSONResponse({"error": "internal error; it is logged, and retrying may not help", "request_id": rid},
                        status_code=500, headers={"X-Request-ID": rid})


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 16:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _postgres_socket_gone(exc: BaseException) -> bool:
    """asyncpg's connect to a Postgres that is down over a unix socket (the embedded one) raises
    FileNotFoundError for the socket file: the database is away, not a defect."""
    return any(isinstance(e, FileNotFoundError) and ".s.PGSQL." in str(e.filename or e)
               for e in _cause_chain(exc))


def install(app: FastAPI) -> None:
    """After ``errors.install``: the ShardUnavailable handler here replaces that one."""

    async def database(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database busy or unreachable on %s %s: %r", request.method, request.url.path, exc)
        return _answer_503("the database", exc)

    async def redis(request: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis busy or unreachable on %s %s: %r", request.method, request.url.path, exc)
        return _answer_503("Redis", exc)

    for cls in TRANSIENT_DB:
        app.add_exception_handler(cls, database)
    for cls in TRANSIENT_REDIS:
        app.add_exception_handler(cls, redis)

    @app.exception_handler(ShardUnavailable)
    async def _shard_unavailable(request: Request, exc: ShardUnavailable) -> JSONResponse:
        if any(isinstance(e, JournalHeadMoved) for e in _cause_chain(exc)):
            return _defect(request, exc, "another writer moved a shard's journal head (a second platform "
                                         "on this schema?)")
        return JSONResponse({"error": SHARD_503}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(JournalHeadMoved)
    async def _head_moved(request: Request, exc: JournalHeadMoved) -> JSONResponse:
        return _defect(request, exc, "another writer moved a shard's journal head (a second platform on this schema?)")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if _postgres_socket_gone(exc):
            return await database(request, exc)
        return _defect(request, exc, "unexpected error")


__all__: list[Any] = ["RETRY_AFTER_S", "TRANSIENT_DB", "TRANSIENT_REDIS", "install", "request_id"]
