"""A request whose SQL the database cancels or whose connection it drops is answered 503 with
Retry-After over a real socket, never a plain-text 500; the retry then succeeds (docs/api.md,
"Errors"). The statement is held on a real lock, and only that backend is hit."""

import asyncio

import pytest

from tests.support.city import api_city

pytestmark = pytest.mark.usefixtures("ray_cluster")


async def _blocked_pid(locker, locker_pid: int) -> int:  # noqa: ANN001 - asyncpg.Connection
    """The backend waiting on ``locker_pid``'s lock (the API's GET /audit), within 10 s."""
    for _ in range(200):
        pid = await locker.fetchval("SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                                    locker_pid)
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.05)
    raise AssertionError("the API's query never waited on the lock")


@pytest.mark.parametrize("how", ["pg_cancel_backend", "pg_terminate_backend"])
def test_a_cancelled_or_dropped_statement_is_503_and_the_retry_works(configured_services, schema, how):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=10, n_terminals=1) as api:
            auditor = api.auth("auditor")
            assert (await api.http.get("/audit", headers=auditor)).status_code == 200
            locker = await api.city.conn()
            try:
                tx = locker.transaction()
                await tx.start()
                await locker.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
                pending = asyncio.ensure_future(api.http.get("/audit", headers=auditor))
                victim = await _blocked_pid(locker, locker.get_server_pid())
                assert await locker.fetchval(f"SELECT {how}($1)", victim)
                r = await asyncio.wait_for(pending, 20)
                await tx.rollback()
            finally:
                await locker.close()
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/json" and r.headers["retry-after"] == "1"
            assert "retry is safe" in r.json()["error"], r.text
            for _ in range(3):  # the pool replaces a dropped connection; the retry is answered
                again = await api.http.get("/audit", headers=auditor)
                if again.status_code == 200:
                    break
            assert again.status_code == 200, again.text

    asyncio.run(scenario())
