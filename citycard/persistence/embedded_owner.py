"""Who started an embedded server: a record next to it, so the next start can find and stop a
server whose owner was killed (kill -9, OOM) instead of leaving it running for ever.

The record names the server and its owner by pid AND process start time: a pid reused by an
unrelated process is never taken for either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

# Postgres: SIGINT is its fast shutdown (rolls back, ends sessions; SIGTERM would wait for the
# dead run's clients to leave), SIGQUIT immediate (the next start replays the WAL), then SIGKILL.
PG_STOP_SIGNALS: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 20.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0))
REDIS_STOP_SIGNALS: tuple[tuple[signal.Signals, float], ...] = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))
STOP_SIGNALS = {"postgres": PG_STOP_SIGNALS, "redis": REDIS_STOP_SIGNALS}


@dataclass(frozen=True)
class OwnerRecord:
    name: str  # "postgres" or "redis"
    server_pid: int
    server_started: float  # psutil create_time
    owner_pid: int
    owner_started: float
    command: str


def record_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.owner.json"


def started_at(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_running(pid: int, started: float) -> bool:
    """The very process recorded (same pid, same start time), not yet exited."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def write_owner(state_dir: Path, name: str, server_pid: int) -> None:
    """Record this process as the owner of the server it just started (atomically replaced)."""
    me = psutil.Process()
    record = OwnerRecord(name, server_pid, started_at(server_pid) or 0.0, me.pid, me.create_time(),
                         " ".join(sys.argv)[:500])
    path = record_path(state_dir, name)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)


def read_owner(state_dir: Path, name: str) -> OwnerRecord | None:
    try:
        return OwnerRecord(**json.loads(record_path(state_dir, name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def remove_owner(state_dir: Path, name: str, server_pid: int) -> None:
    """Drop the record if it still names ``server_pid`` (a later start may have replaced it)."""
    record = read_owner(state_dir, name)
    if record is not None and record.server_pid == server_pid:
        with contextlib.suppress(FileNotFoundError):
            record_path(state_dir, name).unlink()


def stop_process(pid: int, started: float, steps: tuple[tuple[signal.Signals, float], ...]) -> bool:
    """Signal the recorded process step by step, each wait bounded; True once it is gone."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) >= 0.01:
            return True  # the pid belongs to another process now: ours is gone
        for sig, wait_s in steps:
            proc.send_signal(sig)
            try:
                proc.wait(wait_s)
                return True
            except psutil.TimeoutExpired:
                log.warning("pid %d ignored %s for %.0f s", pid, sig.name, wait_s)
    except psutil.NoSuchProcess:
        return True
    return False


def stop_orphan(state_dir: Path, name: str, *, owner_pid: int | None = None) -> OwnerRecord | None:
    """Stop the recorded server if its owner is dead (or is ``owner_pid``, which the caller knows
    is dead); return the record of what was stopped, or None when nothing needed stopping."""
    record = read_owner(state_dir, name)
    if record is None:
        return None
    if owner_pid is not None and record.owner_pid != owner_pid:
        return None
    if owner_pid is None and is_running(record.owner_pid, record.owner_started):
        return None  # its owner runs: a server in use, reused, never stopped by us
    if not is_running(record.server_pid, record.server_started):
        remove_owner(state_dir, name, record.server_pid)
        return None
    log.warning("stopping embedded %s pid %d left by %r (pid %d, no longer running)",
                name, record.server_pid, record.command, record.owner_pid)
    if stop_process(record.server_pid, record.server_started, STOP_SIGNALS[name]):
        remove_owner(state_dir, name, record.server_pid)
    return record


def stop_orphans(state_dir: Path, *, owner_pid: int | None = None) -> list[OwnerRecord]:
    """Every embedded server under ``state_dir`` whose owner died, stopped."""
    return [r for name in STOP_SIGNALS if (r := stop_orphan(state_dir, name, owner_pid=owner_pid)) is not None]
