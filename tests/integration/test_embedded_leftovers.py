"""Embedded servers left by a killed run: found and stopped by the next start, which then owns
(and on stop, stops) its own; nothing is left running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from citycard.persistence.embedded import start_embedded_postgres, start_embedded_redis
from citycard.persistence.embedded_owner import read_owner, record_path

pytestmark = pytest.mark.services

_OWNER = """
import sys, time
from pathlib import Path
from citycard.persistence.embedded import start_embedded_postgres, start_embedded_redis
state = Path(sys.argv[1])
pg, rd = start_embedded_postgres(state), start_embedded_redis(state)
print(pg.pid, rd.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _until_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _killed_owner(state: Path) -> tuple[int, int]:
    """A process that starts both servers, then dies by SIGKILL: its servers live on."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(state)], stdout=subprocess.PIPE, text=True)
    try:
        pg_pid, rd_pid = map(int, owner.stdout.readline().split())
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    assert _running(pg_pid) and _running(rd_pid), "the servers died with their owner: nothing to test"
    assert read_owner(state, "postgres").owner_pid == owner.pid
    return pg_pid, rd_pid


def test_next_start_stops_servers_left_by_a_killed_owner(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pg_pid, rd_pid = _killed_owner(state)
    pg = start_embedded_postgres(state)
    rd = start_embedded_redis(state)
    try:
        assert not _until_gone([pg_pid, rd_pid], 5.0), "orphaned servers still running"
        assert pg.pid not in (None, pg_pid) and rd.pid not in (None, rd_pid)  # new ones, owned by us
        assert read_owner(state, "postgres").server_pid == pg.pid
    finally:
        rd.stop()
        pg.stop()
    assert not _until_gone([pg.pid, rd.pid], 5.0)
    assert not record_path(state, "postgres").exists() and not record_path(state, "redis").exists()


def test_a_server_whose_owner_lives_is_reused_not_stopped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_embedded_redis(state)
    try:
        second = start_embedded_redis(state)
        assert second.pid is None and _running(first.pid)  # reused, never stopped by the second
        second.stop()
        assert _running(first.pid)
    finally:
        first.stop()
