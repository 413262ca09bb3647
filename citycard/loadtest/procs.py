"""Where the time goes, by process: CPU seconds and memory of the platform's processes on
this machine during a load phase (gateway, account shards, terminal sessions, Postgres, the
rest of Ray), read from the OS with psutil. Senders count their own CPU.

Only processes on this machine are seen; Postgres is every ``postgres`` process here,
including backends serving others (the report says so).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    role: str
    cpu_s: float
    rss_bytes: int


def role_of(proc: psutil.Process, gateway_pid: int | None) -> str | None:
    """Which part of the platform a process is, or None for one we do not watch."""
    try:
        if proc.pid == gateway_pid:
            return "gateway"
        name = proc.name()
        if name == "postgres" or name.startswith("postgres:"):
            return "postgres"
        cmd = " ".join(proc.cmdline()[:4])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if cmd.startswith("ray::AccountShard"):
        return "account shards"
    if cmd.startswith("ray::TerminalSession"):
        return "terminal sessions"
    if gateway_pid is None and "citycard" in cmd and cmd.rstrip().endswith(" up"):
        return "gateway"  # a platform started with ``citycard up`` on this machine
    if cmd.startswith("ray::") or "/ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd:
        return "ray (other)"
    return None


def snapshot(gateway_pid: int | None = None) -> dict[int, Sample]:
    """CPU time and resident memory of every watched process, by pid."""
    out: dict[int, Sample] = {}
    for proc in psutil.process_iter():
        role = role_of(proc, gateway_pid)
        if role is None:
            continue
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out[proc.pid] = Sample(role, times.user + times.system, rss)
    return out


def cpu_by_role(before: dict[int, Sample], after: dict[int, Sample]) -> dict[str, float]:
    """CPU seconds each role used between two snapshots (processes that started in between
    count from zero; ones that ended are lost)."""
    out: dict[str, float] = {}
    for pid, s in after.items():
        start = before.get(pid)
        used = s.cpu_s - (start.cpu_s if start is not None and start.role == s.role else 0.0)
        out[s.role] = out.get(s.role, 0.0) + max(used, 0.0)
    return out


def rss_mb_by_role(samples: Iterable[Sample]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        out[s.role] = out.get(s.role, 0.0) + s.rss_bytes / MB
    return out
