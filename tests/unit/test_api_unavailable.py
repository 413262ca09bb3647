"""Each way the database or Redis can be busy or away is a 503 with Retry-After; another writer
on a shard's journal and any unknown exception are a 500 with a request id, logged with it
(the platform's own handlers on a small app, in-process; over a real socket and a real
Postgres: tests/e2e/test_api_unavailable.py)."""

import asyncio
import logging

import asyncpg
import httpx
import pytest
import redis.exceptions as redis_errors
from fastapi import FastAPI

from citycard.actors.shard_client import ShardUnavailable
from citycard.api import errors, unavailable
from citycard.errors import JournalHeadMoved

TRANSIENTS = {
    "serialization": asyncpg.exceptions.SerializationError("could not serialize access"),
    "deadlock": asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    "too_many": asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    "statement_timeout": asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    "admin_shutdown": asyncpg.exceptions.AdminShutdownError("terminating connection"),
    "cannot_connect": asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    "lock_timeout": asyncpg.exceptions.LockNotAvailableError("could not obtain lock"),
    "gone": asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    "refused": ConnectionRefusedError(111, "Connection refused"),
    "redis_down": redis_errors.ConnectionError("Error 111 connecting"),
    "redis_timeout": redis_errors.TimeoutError("Timeout reading from socket"),
    "redis_loading": redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
    "shard": ShardUnavailable("shard 0 did not answer in 5 s"),
    # asyncpg's connect when the embedded Postgres is down: its unix socket file is gone
    "pg_socket_gone": FileNotFoundError(2, "No such file or directory", "/tmp/citycard/pg/.s.PGSQL.5432"),
}


def _head_moved_through_the_client() -> ShardUnavailable:
    try:
        try:
            raise JournalHeadMoved("shard 0: the journal head is not at lsn 4: another writer owns this shard")
        except JournalHeadMoved as cause:
            raise ShardUnavailable("shard 0 did not answer in 5 s") from cause
    except ShardUnavailable as exc:
        return exc


DEFECTS = {
    "bug": RuntimeError("a defect"),
    "head_moved": _head_moved_through_the_client(),
    "head_moved_direct": JournalHeadMoved("shard 1: the journal head is not at lsn 9"),
    "unknown_pg": asyncpg.exceptions.UndefinedColumnError('column "x" does not exist'),
    "other_missing_file": FileNotFoundError(2, "No such file or directory", "/etc/citycard/fares.toml"),
}


def _app() -> FastAPI:
    app = FastAPI()
    errors.install(app)
    unavailable.install(app)

    @app.get("/raise/{name}")
    async def raising(name: str) -> None:
        raise {**TRANSIENTS, **DEFECTS}[name]

    return app


async def _get(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        return await http.request(method, path, headers=headers)


@pytest.mark.parametrize("name", sorted(TRANSIENTS))
def test_a_busy_or_absent_database_redis_or_shard_is_503_with_retry_after(name: str) -> None:
    r = asyncio.run(_get(f"/raise/{name}"))
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/json" and r.headers["retry-after"] == "1"
    assert "retry" in r.json()["error"], r.text
    if name != "shard":
        assert "retry is safe" in r.json()["error"] and r.json()["retry_after_s"] == 1


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_a_defect_or_another_writer_is_500_with_a_request_id_in_the_answer_and_the_log(
        name: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="citycard.api.unavailable"):
        r = asyncio.run(_get(f"/raise/{name}"))
    assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
    body = r.json()
    rid = body["request_id"]
    assert len(rid) == 16 and r.headers["x-request-id"] == rid
    assert "Traceback" not in r.text and "journal head" not in r.text
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None, caplog.text
    if name.startswith("head_moved"):
        assert "another writer" in logged[0].getMessage()


def test_the_callers_request_id_is_kept_and_a_hostile_one_replaced() -> None:
    r = asyncio.run(_get("/raise/bug", headers={"X-Request-ID": "lb-7f3a.91"}))
    assert r.json()["request_id"] == "lb-7f3a.91"
    r = asyncio.run(_get("/raise/bug", headers={"X-Request-ID": "x y<script>alert(1)</script>"}))
    assert r.json()["request_id"] != "x" and len(r.json()["request_id"]) == 16


def test_no_such_path_and_no_such_method_are_json() -> None:
    r = asyncio.run(_get("/nothing/here"))
    assert (r.status_code, r.headers["content-type"], r.json()) == (404, "application/json", {"error": "Not Found"})
    r = asyncio.run(_get("/raise/bug", method="DELETE"))
    assert r.status_code == 405 and r.headers["content-type"] == "application/json" and r.json()["error"]
