"""gateway.processes = 2: a second gateway process on the same port (SO_REUSEPORT) serves
terminals beside the first, through the same shards, and stops with the platform."""

import asyncio

import psutil
import pytest

from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.loadtest.audit import run_audit
from citycard.terminal.client import TerminalClient
from tests.support.city import actor_balances, plain_cards, running_city
from tests.support.clock import now_ms

pytestmark = pytest.mark.usefixtures("ray_cluster")
TERMINALS = 40


def _connections_on(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_two_gateway_processes_share_the_port_and_the_shards(configured_services, schema):
    async def scenario() -> None:
        async with running_city(configured_services, schema, n_terminals=TERMINALS,
                                gateway={"processes": 2}) as city:
            workers = city.platform.workers
            assert workers is not None and len(workers.pids) == 1
            worker_pid = workers.pids[0]
            port = city.port
            cards = plain_cards(city)
            clients = []
            for t in city.terminals:
                c = TerminalClient(t.terminal_id, city.settings.city.master_key)
                await c.connect("127.0.0.1", port)
                clients.append(c)
            # the kernel spread the connections: each process holds some (all 40 on one: 2**-39)
            mine, theirs = _connections_on(psutil.Process().pid, port), _connections_on(worker_pid, port)
            assert mine + theirs == TERMINALS and mine > 0 and theirs > 0, (mine, theirs)
            answers = await asyncio.gather(*[
                c.tap(1, cards[i % len(cards)], now_ms() - 3_600_000 + i, int(TapKind.BUS), route=7)
                for i, c in enumerate(clients)])
            assert {a.code for a in answers} <= {Result.OK, Result.INSUFFICIENT_FUNDS}
            assert sum(a.code == Result.OK for a in answers) > TERMINALS // 2
            # a retry through the other process (a new connection may land on either) is a replay
            again = TerminalClient(city.terminals[0].terminal_id, city.settings.city.master_key)
            await again.connect("127.0.0.1", port)
            replay = await again.tap(1, cards[0], now_ms() - 3_600_000, int(TapKind.BUS), route=7)
            assert replay.replay is True and replay.code == answers[0].code
            for c in [*clients, again]:
                await c.close()
            conn = await city.conn()
            try:
                audit = await run_audit(conn, await actor_balances(city))
            finally:
                await conn.close()
            assert audit.ok and audit.journal_rows == TERMINALS, audit
        assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE

    asyncio.run(scenario())
