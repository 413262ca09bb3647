"""The load lab's CPU and memory account counts only its run's processes: a process named like
a shard outside the run's tree, and a Postgres backend serving someone else, are not counted;
the same inside the tree, and the backend of the run's own connection, are
(citycard/loadtest/procs.py)."""

import asyncio
import os
import subprocess
import sys
import time
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest

from citycard.loadtest import procs

SHARD_NAME = "ray::AccountShard"


def _decoy_outside_the_tree(argv0: str) -> int:
    """A ``sleep`` that calls itself ``argv0``, reparented away from this process (its parent
    shell exits), so it is on the machine but not in this process's tree."""
    out = subprocess.run(["bash", "-c", f'(exec -a "{argv0}" sleep 60 >/dev/null 2>&1 & echo $!)'],
                         capture_output=True, text=True, timeout=10, check=True)
    return int(out.stdout.strip())


def _wait_named(pid: int, argv0: str) -> None:
    for _ in range(100):
        if " ".join(psutil.Process(pid).cmdline()).startswith(argv0):
            return
        time.sleep(0.02)
    raise AssertionError(f"{pid} never took the name {argv0}")


def test_a_shard_named_process_outside_the_run_is_not_counted_and_one_inside_is():
    outside = _decoy_outside_the_tree(SHARD_NAME)
    inside = subprocess.Popen(["bash", "-c", f'exec -a "{SHARD_NAME}" sleep 60'])
    try:
        _wait_named(outside, SHARD_NAME)
        _wait_named(inside.pid, SHARD_NAME)
        assert psutil.Process(outside).ppid() != os.getpid()
        machine = procs.snapshot(os.getpid())
        assert machine[outside].role == "account shards"  # it does match by name
        own = procs.own_snapshot(procs.RunScope(frozenset({os.getpid()}), os.getpid()))
        assert outside not in own
        assert own[inside.pid].role == "account shards" and own[os.getpid()].role == "gateway"
    finally:
        inside.kill()
        inside.wait()
        psutil.Process(outside).kill()


OTHER = """
import asyncio, os, sys
import asyncpg
if os.fork():
    os._exit(0)  # the child lives on, reparented: outside the test's tree, like another platform
os.setsid()

async def main():
    c = await asyncpg.connect(sys.argv[1])
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {c.get_server_pid()}")
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_only_the_postgres_backends_of_the_runs_own_connections_count(configured_services, tmp_path):
    url = configured_services.db_url
    port = urlsplit(url).port or 5432
    said = tmp_path / "other"
    subprocess.run([sys.executable, "-c", OTHER, url, str(said)], check=True, timeout=30)
    for _ in range(300):
        if said.exists():
            break
        time.sleep(0.05)
    other_pid, theirs = (int(x) for x in said.read_text().split())

    async def scenario() -> None:
        conn = await asyncpg.connect(url)
        try:
            mine = conn.get_server_pid()
            scope = procs.RunScope(frozenset({os.getpid()}), os.getpid(), db_port=port)
            pids = set(procs.run_pids(scope))
            assert other_pid not in pids
            assert mine in pids and theirs not in pids, (mine, theirs, pids)
            own = procs.own_snapshot(scope)
            assert own[mine].role == "postgres" and theirs not in own
            # its memory is its share of the pages it shares with the other backends, not all of
            # them (where this user may read it; RSS otherwise)
            try:
                psutil.Process(mine).memory_full_info()
                assert 0 < own[mine].memory_bytes < psutil.Process(mine).memory_info().rss
            except psutil.AccessDenied:
                assert own[mine].memory_bytes == pytest.approx(psutil.Process(mine).memory_info().rss, rel=0.2)
            machine = procs.snapshot(os.getpid())
            assert machine[theirs].role == "postgres"  # it does match by name
        finally:
            await conn.close()

    try:
        asyncio.run(scenario())
    finally:
        psutil.Process(other_pid).kill()
