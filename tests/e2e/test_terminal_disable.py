"""``citycard terminal disable`` cuts a terminal off now (a stolen bus validator): the command
as an operator runs it (a real process), against a live gateway on real Postgres, Redis, Ray.

- Its open connection gets TERMINAL_DISABLED and is closed within ~2 s; other terminals keep
  being served; it is refused at its next authentication; ``enable`` lets it back.
- With Redis unreachable the disable still holds in Postgres, and the gateway's periodic
  check of Postgres closes the open connection.
- An unknown terminal is a clear error, exit code 2.
"""

import asyncio
import time

import pytest

from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.protocols import messages as m
from citycard.protocols.codes import ErrorCode
from citycard.terminal.client import ServerError, TerminalClient
from tests.support.city import City, plain_cards, running_city
from tests.support.cli import citycard_env, run_citycard
from tests.support.clock import now_ms

pytestmark = pytest.mark.services

CUTOFF_S = 2.0
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"  # port 1: nothing listens, refused at once



async def bus_tap(client: TerminalClient, seq: int, card: int) -> int:
    r = await asyncio.wait_for(client.tap(seq, card, now_ms(), int(TapKind.BUS), route=7), 10)
    return r.code


async def cut_off_within(client: TerminalClient, timeout_s: float) -> m.Error:
    """The error frame the server sent, once the server has also closed the connection."""
    error = await client.next_control(timeout_s)
    assert isinstance(error, m.Error), error
    deadline = time.monotonic() + timeout_s
    while client.closed_error is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert client.closed_error is not None, "the server did not close the connection"
    return error


async def refused_at_auth(city: City, terminal_id: int) -> int:
    with pytest.raises(ServerError) as refused:
        await city.client(terminal_id)
    return refused.value.error.code


def cutoffs(city: City, via: str) -> float:
    value = city.platform.metrics.registry.get_sample_value("citycard_terminal_cutoffs_total", {"via": via})
    return value or 0.0


def test_disable_cuts_the_open_connection_now_and_enable_lets_it_back(configured_services, schema, ray_cluster):
    env = citycard_env(configured_services, schema)

    async def go() -> None:
        async with running_city(configured_services, schema, n_cards=200, n_terminals=3) as city:
            stolen, other = city.terminals[0].terminal_id, city.terminals[1].terminal_id
            cards = iter(plain_cards(city))
            victim, bystander = await city.client(stolen), await city.client(other)
            assert await bus_tap(victim, 1, next(cards)) == Result.OK
            assert await bus_tap(bystander, 1, next(cards)) == Result.OK

            code, out, err = await run_citycard(env, "terminal", "disable", str(stolen), "--reason", "stolen from bus 7")
            done_s = time.monotonic()
            assert code == 0, err
            assert f"terminal {stolen}: disabled" in out and "1 gateway(s) told" in out, out
            error = await cut_off_within(victim, CUTOFF_S)
            assert error.code == ErrorCode.TERMINAL_DISABLED, error
            assert time.monotonic() - done_s < CUTOFF_S
            assert cutoffs(city, "event") == 1 and cutoffs(city, "check") == 0
            with pytest.raises(ConnectionError):
                await bus_tap(victim, 2, next(cards))
            await victim.close()

            assert await bus_tap(bystander, 2, next(cards)) == Result.OK  # others are served throughout
            assert await refused_at_auth(city, stolen) == ErrorCode.TERMINAL_DISABLED

            # Idempotent: again is no change, no second audit row; the message is sent again.
            code, out, err = await run_citycard(env, "terminal", "disable", str(stolen))
            assert code == 0 and f"terminal {stolen}: already disabled" in out, (out, err)
            code, out, err = await run_citycard(env, "terminal", "show", str(stolen))
            assert code == 0 and "enabled: no" in out and f"terminal_id: {stolen}" in out, (out, err)

            code, out, err = await run_citycard(env, "terminal", "enable", str(stolen), "--reason", "found")
            assert code == 0 and f"terminal {stolen}: enabled" in out, (out, err)
            code, out, err = await run_citycard(env, "terminal", "enable", str(stolen))
            assert code == 0 and f"terminal {stolen}: already enabled" in out, (out, err)
            back = await city.client(stolen)
            assert await bus_tap(back, 3, next(cards)) == Result.OK
            assert await bus_tap(bystander, 3, next(cards)) == Result.OK
            await back.close()
            await bystander.close()

            conn = await city.conn()
            try:
                audit = await conn.fetch("SELECT action, reason FROM audit_log WHERE subject = $1 ORDER BY audit_id",
                                         f"terminal:{stolen}")
                journal = await conn.fetch("SELECT seq FROM journal WHERE terminal_id = $1 ORDER BY seq", stolen)
            finally:
                await conn.close()
            assert [tuple(r) for r in audit] == [("terminal.disable", "stolen from bus 7"), ("terminal.enable", "found")]
            assert [r[0] for r in journal] == [1, 3]  # nothing got through while disabled
            code, out, err = await run_citycard(env, "terminal", "show", str(stolen), "--exact")
            assert code == 0 and "journal_taps: 2" in out and "journal_last_seq: 3" in out, (out, err)

    asyncio.run(asyncio.wait_for(go(), 180))


def test_with_redis_unreachable_the_disable_holds_and_the_check_cuts_off(configured_services, schema, ray_cluster):
    env = citycard_env(configured_services, schema) | {"CITYCARD_REDIS_URL": UNREACHABLE_REDIS_URL}

    async def go() -> None:
        async with running_city(configured_services, schema, n_cards=100, n_terminals=2,
                                gateway={"terminal_check_ms": 300}) as city:
            stolen = city.terminals[0].terminal_id
            cards = iter(plain_cards(city))
            victim = await city.client(stolen)
            assert await bus_tap(victim, 1, next(cards)) == Result.OK

            code, out, err = await run_citycard(env, "terminal", "disable", str(stolen))
            assert code == 0, err
            assert f"terminal {stolen}: disabled" in out, out
            assert "Redis unreachable" in err and "holds in Postgres" in err, err
            error = await cut_off_within(victim, CUTOFF_S)
            assert error.code == ErrorCode.TERMINAL_DISABLED, error
            assert cutoffs(city, "check") == 1
            await victim.close()
            assert await refused_at_auth(city, stolen) == ErrorCode.TERMINAL_DISABLED

    asyncio.run(asyncio.wait_for(go(), 180))


@pytest.mark.parametrize("action", ["disable", "enable", "show"])
def test_unknown_terminal_is_a_clear_error_exit_2(configured_services, schema, action):
    async def go() -> tuple[int, str, str]:
        return await run_citycard(citycard_env(configured_services, schema), "terminal", action, "99999")

    code, out, err = asyncio.run(go())
    assert code == 2, (code, out, err)
    assert "terminal 99999 is not registered" in err and "Traceback" not in err, err


def test_a_new_terminal_authenticates_once_registered(configured_services, schema, ray_cluster):
    env = citycard_env(configured_services, schema)

    async def go() -> None:
        async with running_city(configured_services, schema, n_cards=50, n_terminals=1) as city:
            new_id = 4097
            assert await refused_at_auth(city, new_id) == ErrorCode.UNKNOWN_TERMINAL
            code, out, err = await run_citycard(env, "terminal", "register", str(new_id), "--kind", "bus", "--route", "12",
                                            "--reason", "new bus 12 validator")
            assert code == 0 and f"terminal {new_id}: registered" in out, (out, err)
            client = await city.client(new_id)  # the session actor finds it without a restart
            assert await bus_tap(client, 1, plain_cards(city)[0]) == Result.OK
            await client.close()
            code, out, err = await run_citycard(env, "terminal", "register", str(new_id), "--kind", "bus", "--route", "12")
            assert code == 0 and "already registered" in out, (out, err)
            code, out, err = await run_citycard(env, "terminal", "register", str(new_id), "--kind", "merchant")
            assert code == 2 and "already registered as kind 1 route 12" in err, (out, err)
            code, out, err = await run_citycard(env, "terminal", "register", "4098", "--kind", "spaceship")
            assert code == 2 and "a kind is one of" in err, (out, err)
            conn = await city.conn()
            try:
                audit = await conn.fetch("SELECT action, reason FROM audit_log WHERE subject = $1", f"terminal:{new_id}")
            finally:
                await conn.close()
            assert [tuple(r) for r in audit] == [("terminal.register", "new bus 12 validator")]

    asyncio.run(asyncio.wait_for(go(), 180))
