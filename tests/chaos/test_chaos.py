"""Chaos on real processes (issue 6): faults injected under load from terminals over real TCP.

After each fault the terminals resend every unanswered tap with the same seq until it has a
final answer; then every answered tap must be in Postgres exactly once with the answer's code
and fare, answered taps sent again must be replays of the first answer, the actors' balances
must equal a replay of the journal, and the money must balance to the fen. Recovery times go
to ``<pytest basetemp>/chaos/last_results.json`` and one printed line per fault (``-s``).
"""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis.asyncio as aioredis

from citycard.domain.results import Result
from citycard.domain.taps import TapKind
from citycard.persistence import db
from citycard.terminal.client import TerminalClient
from tests.support.chaos_load import ChaosLoad, chaos_summary, verify
from tests.support.city import City, running_city
from tests.support.cli import citycard_env, gateway_port, migrated_city
from tests.support.clock import now_ms
from tests.support.results import ResultsFile
from tests.support.services import drop_redis_prefix
from tests.support.waiting import until_available

pytestmark = pytest.mark.services

N_CARDS = 3000  # ~1 tap per card: most taps move money (no drained purses, no passbacks)
N_TERMINALS = 4
WARMUP_S = 1.5
RECOVER_TIMEOUT_S = 45.0
AFTER_RECOVERY_S = 1.0


async def actor_balances(city: City) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in await asyncio.gather(*[a.balances.remote() for a in city.platform.shards]):
        out.update(part)
    return out


def start_load(city: City) -> ChaosLoad:
    load = ChaosLoad([t.terminal_id for t in city.terminals], city.settings.city.master_key,
                     [c[0] for c in city.cards], lambda: city.port)
    load.start()
    return load


async def finish(load: ChaosLoad, city: City, fault: str, results_file: ResultsFile, *,
                 write: bool = True) -> dict[str, Any]:
    served = await load.wait_all_served(RECOVER_TIMEOUT_S)
    await asyncio.sleep(AFTER_RECOVERY_S)
    await load.stop_and_drain()
    assert served, f"not every terminal was served again within {RECOVER_TIMEOUT_S} s: {load.recovery()}"
    balances = await until_available(lambda: actor_balances(city))
    conn = await city.conn()
    try:
        figures = await verify(load, conn, balances, city.port)
    finally:
        await conn.close()
    if write:
        results_file.record(fault, figures, chaos_summary(figures))
    return figures


async def assert_shards_reloaded(city: City) -> None:
    """Each shard lost its store connections: it must have rebuilt itself from Postgres (again)."""
    stats = await until_available(
        lambda: asyncio.gather(*[a.stats.remote() for a in city.platform.shards]))
    assert all(st["recoveries"] >= 2 for st in stats), [st["recoveries"] for st in stats]


# -- 1 and 2: kill -9 of an actor process ---------------------------------------------------------

@pytest.mark.parametrize("role", ["account_shard", "terminal_session"])
def test_kill_actor_process(role, configured_services, schema, ray_cluster, results_file):
    async def scenario() -> None:
        async with running_city(configured_services, schema, n_cards=N_CARDS, n_terminals=N_TERMINALS,
                                city={"account_shards": 2}) as city:
            victim = city.platform.shards[0] if role == "account_shard" else city.platform.sessions[0]
            pid = await victim.pid.remote()
            assert psutil.Process(pid).cmdline()[0].startswith("ray::")
            load = start_load(city)
            await asyncio.sleep(WARMUP_S)
            load.mark_fault()
            os.kill(pid, signal.SIGKILL)
            if role == "terminal_session":
                # Terminals authenticate through the sessions: make them all reconnect now.
                await load.drop_connections()
            figures = await finish(load, city, f"kill -9 {role}", results_file, write=False)
            assert await until_available(victim.pid.remote) != pid  # it really died and came back
            # Per-terminal totals are advisory (the journal is the record): measure, do not assert.
            await asyncio.sleep(1.5)  # a report round and a flush
            n = len(city.platform.sessions)
            totals = [await until_available(lambda t=t: city.platform.sessions[t % n].totals.remote(t))
                      for t in (x.terminal_id for x in city.terminals)]
            conn = await city.conn()
            try:
                rows = dict(await conn.fetch("SELECT terminal_id, count(*) FROM journal GROUP BY terminal_id"))
            finally:
                await conn.close()
            figures["session_totals_taps_drift"] = sum(abs(t["taps"] - rows.get(t["terminal_id"], 0))
                                                       for t in totals)
            results_file.record(f"kill -9 {role}", figures, chaos_summary(figures))

    asyncio.run(scenario())


# -- 4: pg_terminate_backend on the journal writers' connections ---------------------------------

def test_terminate_journal_backends(own_services, ray_cluster, results_file):
    schema = f"t_chaos_{os.getpid()}_term"

    async def scenario() -> None:
        async with running_city(own_services.urls, schema, n_cards=N_CARDS, n_terminals=N_TERMINALS,
                                city={"account_shards": 2}) as city:
            load = start_load(city)
            await asyncio.sleep(WARMUP_S)
            admin = await city.conn()
            try:
                load.mark_fault()
                killed = await admin.fetch(
                    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND application_name = 'citycard'")  # our own embedded Postgres: all ours
                # at least each shard's writer, side and op-key connections (2 shards x 3)
                assert len(killed) >= 6 and all(r[1] for r in killed), killed
                pids = [r[0] for r in killed]
                deadline = time.monotonic() + 10
                while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = any($1::int[])",
                                           pids) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert not await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = any($1::int[])", pids)
            finally:
                await admin.close()
            await finish(load, city, "pg_terminate_backend journal writers", results_file)
            await assert_shards_reloaded(city)

    asyncio.run(scenario())


# -- 4b: Postgres hangs: commits blocked for longer than the commit timeout -----------------------

HANG_S = 4.0


def test_journal_commits_hang(configured_services, schema, ray_cluster, results_file):
    """Every journal commit blocks (the shards' head rows are locked by another transaction) for
    longer than ledger.commit_timeout_ms: commits fail by timeout and the shards reload instead of
    holding the gateway's in-flight calls; once the lock goes, every tap gets its final answer."""

    async def scenario() -> None:
        async with running_city(configured_services, schema, n_cards=N_CARDS, n_terminals=N_TERMINALS,
                                city={"account_shards": 2}, ledger={"commit_timeout_ms": 1000},
                                gateway={"shard_call_timeout_ms": 2000}) as city:
            load = start_load(city)
            await asyncio.sleep(WARMUP_S)
            admin = await city.conn()
            try:
                load.mark_fault()
                async with admin.transaction():
                    locked = await admin.fetch("SELECT shard_id FROM shard_heads FOR UPDATE")
                    assert len(locked) == 2
                    await asyncio.sleep(HANG_S)
            finally:
                await admin.close()
            await finish(load, city, f"journal commits hung {HANG_S:.0f} s (head rows locked)", results_file)
            # Only a shard with a commit in flight during the hang times out and reloads. The
            # terminals' taps may all be waiting on one shard then (each resends its unanswered
            # seqs first), so the other may have nothing to commit: at least one reloaded.
            stats = await until_available(
                lambda: asyncio.gather(*[a.stats.remote() for a in city.platform.shards]))
            assert any(st["recoveries"] >= 2 for st in stats), [st["recoveries"] for st in stats]

    asyncio.run(scenario())


# -- 5: Postgres stopped and started again (our embedded one only) --------------------------------

def test_postgres_stop_and_start(own_services, ray_cluster, results_file):
    schema = f"t_chaos_{os.getpid()}_pgstop"

    async def scenario() -> None:
        async with running_city(own_services.urls, schema, n_cards=N_CARDS, n_terminals=N_TERMINALS,
                                city={"account_shards": 2}) as city:
            load = start_load(city)
            await asyncio.sleep(WARMUP_S)
            load.mark_fault()
            await asyncio.to_thread(own_services.pg.stop)
            await asyncio.sleep(2.0)  # down for a while under load
            await asyncio.to_thread(own_services.restart_postgres)
            await finish(load, city, "postgres stop/start", results_file)
            await assert_shards_reloaded(city)

    asyncio.run(scenario())


# -- 6: Redis flushed (our prefix only) / our embedded Redis restarted ----------------------------

async def blocked_within(city: City, terminal_id: int, seq: int, card: int, timeout_s: float) -> float | None:
    """Seconds until a tap of ``card`` is refused as CARD_BLOCKED (a new seq per try), or None."""
    started = time.monotonic()
    c = TerminalClient(terminal_id, city.settings.city.master_key)
    await c.connect("127.0.0.1", city.port)
    try:
        while time.monotonic() - started < timeout_s:
            r = await asyncio.wait_for(c.tap(seq, card, now_ms(), int(TapKind.BUS), route=3), 30)
            seq += 1
            if r.code == Result.CARD_BLOCKED:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        return None
    finally:
        await c.close()


@pytest.mark.parametrize("how", ["flush_prefix", "restart"])
def test_redis_lost(how, own_services, ray_cluster, results_file):
    schema = f"t_chaos_{os.getpid()}_redis_{how}"

    async def scenario() -> None:
        # one terminal more than the load uses: it checks the hotlist
        async with running_city(own_services.urls, schema, n_cards=N_CARDS, n_terminals=N_TERMINALS + 1,
                                city={"account_shards": 2}) as city:
            checker = city.terminals[-1].terminal_id
            city.terminals = city.terminals[:-1]
            load_cards = [c[0] for c in city.cards[2:]]
            lost_before, lost_after = city.cards[0][0], city.cards[1][0]
            load = ChaosLoad([t.terminal_id for t in city.terminals], city.settings.city.master_key,
                             load_cards, lambda: city.port)
            await city.platform.hotlist_add(lost_before, "reported lost before the fault")
            load.start()
            await asyncio.sleep(WARMUP_S)
            load.mark_fault()
            if how == "flush_prefix":
                await drop_redis_prefix(own_services.urls.redis_url, schema)
            else:
                await asyncio.to_thread(own_services.rd.stop)
                await asyncio.to_thread(own_services.restart_redis)
            figures = await finish(load, city, f"redis {how}", results_file, write=False)
            # Redis holds nothing Postgres cannot rebuild: the hotlist still refuses the card
            # reported before the fault, and a card reported after it is refused too.
            assert await blocked_within(city, checker, 1, lost_before, 10.0) is not None
            await until_available(lambda: city.platform.hotlist_add(lost_after, "reported lost after"), 10.0)
            took = await blocked_within(city, checker, 100, lost_after, 10.0)
            assert took is not None, "a card reported lost after the Redis fault is still accepted"
            figures["hotlist_add_effective_s"] = round(took, 3)
            results_file.record(f"redis {how}", figures, chaos_summary(figures))
            r = aioredis.from_url(own_services.urls.redis_url)
            try:
                assert await r.ping()
            finally:
                await r.aclose()
            await drop_redis_prefix(own_services.urls.redis_url, schema)

    asyncio.run(scenario())


# -- 3: kill -9 of the gateway process (`citycard up`) --------------------------------------------

def _ours(schema: str) -> list[psutil.Process]:
    """Live processes started for this schema (the `citycard up` tree and its Ray inherit the env)."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("CITYCARD_DATABASE__SCHEMA") == schema and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class Up:
    """`citycard up` in its own session (process group), its output drained by a thread."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log.open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "citycard.cli.main", "up"], env=env,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
        self.port: int | None = None
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "gateway on" in line and self.port is None:
                self.port = gateway_port(line)
                self.ready.set()

    def wait_ready(self, timeout_s: float = 120.0) -> int:
        if not self.ready.wait(timeout_s):
            raise AssertionError(f"citycard up not ready (exit {self.proc.poll()})")
        assert self.port is not None
        return self.port

    def kill_group(self) -> None:
        """kill -9 of the process, then of everything left in its process group (its Ray)."""
        tree = []
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        for pid_kill in (lambda: os.kill(self.proc.pid, signal.SIGKILL),
                         lambda: os.killpg(self.proc.pid, signal.SIGKILL)):
            try:
                pid_kill()
            except ProcessLookupError:
                pass
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)
        self.log.close()


def test_kill_gateway_process(configured_services, schema, results_file, tmp_path):
    env = citycard_env(configured_services, schema, "chaos", CITYCARD_API__PORT="0", CITYCARD_RAY__NUM_CPUS="2",
                       CITYCARD_CITY__ACCOUNT_SHARDS="2",
                       RAY_ADDRESS="local")  # its own Ray, never one this test process or anyone else runs
    settings, cards, terminals = migrated_city(env, configured_services, schema, N_CARDS, N_TERMINALS, shards=2)
    assert not _ours(schema)
    ups: list[Up] = []
    try:
        started = time.monotonic()
        ups.append(Up(env, tmp_path / "up.log"))
        port = {"now": ups[0].wait_ready()}
        first_ready_s = round(time.monotonic() - started, 3)

        async def scenario() -> dict[str, Any]:
            load = ChaosLoad([t.terminal_id for t in terminals], settings.city.master_key,
                             [c[0] for c in cards], lambda: port["now"])
            load.start()
            await asyncio.sleep(WARMUP_S + 1.0)
            load.mark_fault()
            os.kill(ups[0].proc.pid, signal.SIGKILL)  # the fault: the gateway process dies
            await asyncio.to_thread(ups[0].kill_group)  # and its Ray with it (no leaks)
            ups.append(Up(env, tmp_path / "up.log"))
            port["now"] = await asyncio.to_thread(ups[1].wait_ready)
            assert load.fault_at is not None
            restart_ready_s = round(time.monotonic() - load.fault_at, 3)
            served = await load.wait_all_served(RECOVER_TIMEOUT_S)
            await asyncio.sleep(AFTER_RECOVERY_S)
            await load.stop_and_drain()
            assert served, f"not every terminal was served again: {load.recovery()}"
            conn = await db.connect(configured_services.db_url, schema)
            try:
                # The actors live in the subprocess's Ray: their balances must equal a replay of
                # the journal, and the cards table plus journal is what they load on start.
                figures = await verify(load, conn, None, port["now"])
            finally:
                await conn.close()
            return {**figures, "first_start_ready_s": first_ready_s, "restart_ready_s": restart_ready_s}

        figures = asyncio.run(scenario())
        results_file.record("kill -9 gateway (citycard up)", figures, chaos_summary(figures))
    finally:
        for up in ups:
            up.kill_group()
        deadline = time.monotonic() + 15
        while _ours(schema) and time.monotonic() < deadline:
            time.sleep(0.2)
        leaked = _ours(schema)
        for p in leaked:
            p.kill()
    assert not leaked, f"processes left behind: {[(p.pid, p.name()) for p in leaked]}"
