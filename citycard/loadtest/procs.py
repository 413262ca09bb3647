"""Where the time goes, by process: CPU seconds and memory of the platform's processes on
this machine during a load phase (gateway, account shards, terminal sessions, Postgres, the
rest of Ray), read from the OS with psutil. Senders count their own CPU.

``snapshot`` sees every matching process on the machine (the region lab filters it itself);
the load lab's ``own_snapshot`` sees only its run's: the process tree under its roots (this
process for its own platform, with its Ray and embedded servers; for ``--target`` the process
listening on the target's port, found on this machine), and the Postgres backends serving
that tree's own connections. Another platform's processes on the same machine never count.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    role: str
    cpu_s: float
    memory_bytes: int  # resident; proportional for Postgres (memory_bytes_of)


def memory_bytes_of(proc: psutil.Process, role: str) -> int:
    """Resident size, except for Postgres: its backends share its buffers, and their resident
    sizes summed count those once per backend that touched them, growing with backends while
    memory does not. For Postgres the proportional set size (each shared page divided among
    its sharers), whose sum is memory used. Not for the rest: reading it walks every page
    (about 25 ms a GB), and the Python processes share little."""
    if role == "postgres":
        try:
            pss = getattr(proc.memory_full_info(), "pss", None)
            if pss is not None:
                return int(pss)
        except psutil.AccessDenied:
            pass
    return int(proc.memory_info().rss)


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
    if "citycard.cli.gateway_workers" in cmd:
        return "gateway"  # one of its other gateway processes (gateway.processes)
    if gateway_pid is None and "citycard" in cmd and cmd.rstrip().endswith(" up"):
        return "gateway"  # a platform started with ``citycard up`` on this machine
    if cmd.startswith("ray::") or "/ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd:
        return "ray (other)"
    if "redis-server" in cmd:
        return "redis"
    return None


def snapshot(gateway_pid: int | None = None) -> dict[int, Sample]:
    """CPU time and memory (``memory_bytes_of``) of every watched process, by pid."""
    out: dict[int, Sample] = {}
    for proc in psutil.process_iter():
        role = role_of(proc, gateway_pid)
        if role is None:
            continue
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                memory = memory_bytes_of(proc, role)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out[proc.pid] = Sample(role, times.user + times.system, memory)
    return out


GENERATOR = "load generator"  # the senders: memory only, since they count their own CPU


@dataclass(frozen=True)
class RunScope:
    """Whose processes a run counts: the trees under ``roots``, and the backends of a Postgres
    on this machine listening on ``db_port`` that serve those trees' connections."""

    roots: frozenset[int]
    gateway_pid: int | None
    db_port: int | None = None
    generator_pid: int = field(default_factory=os.getpid)


def _tcp() -> list[Any]:
    try:
        return list(psutil.net_connections(kind="tcp"))
    except (psutil.AccessDenied, OSError):
        return []


def listener_pid(port: int) -> int | None:
    """The process on this machine listening on TCP ``port`` (a ``--target``'s platform)."""
    for c in _tcp():
        if getattr(c, "status", "") == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            return int(c.pid) if c.pid else None
    return None


def run_pids(scope: RunScope) -> dict[int, psutil.Process]:
    """The run's own processes: the trees under its roots and their Postgres backends."""
    procs: dict[int, psutil.Process] = {}
    for root in scope.roots:
        try:
            top = psutil.Process(root)
            for p in [top, *top.children(recursive=True)]:
                procs[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    if scope.db_port:
        conns = _tcp()
        ours = {(c.laddr.ip, c.laddr.port) for c in conns
                if c.pid in procs and c.raddr and c.raddr.port == scope.db_port}
        for c in conns:
            if (c.pid and c.pid not in procs and c.laddr and c.laddr.port == scope.db_port
                    and c.raddr and (c.raddr.ip, c.raddr.port) in ours):
                try:
                    procs[c.pid] = psutil.Process(c.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
    return procs


def own_snapshot(scope: RunScope) -> dict[int, Sample]:
    """``snapshot`` of the run's own processes only; its senders as GENERATOR (memory)."""
    out: dict[int, Sample] = {}
    for pid, proc in run_pids(scope).items():
        role = role_of(proc, scope.gateway_pid)
        try:
            if role is None and (pid == scope.generator_pid or (
                    proc.ppid() == scope.generator_pid and "multiprocessing" in " ".join(proc.cmdline()))):
                role = GENERATOR
            if role is None:
                continue
            with proc.oneshot():
                times = proc.cpu_times()
                memory = memory_bytes_of(proc, role)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out[pid] = Sample(role, times.user + times.system, memory)
    return out


def cpu_by_role(before: dict[int, Sample], after: dict[int, Sample]) -> dict[str, float]:
    """CPU seconds each role used between two snapshots (processes that started in between
    count from zero; ones that ended are lost)."""
    out: dict[str, float] = {}
    for pid, s in after.items():
        if s.role == GENERATOR:
            continue
        start = before.get(pid)
        used = s.cpu_s - (start.cpu_s if start is not None and start.role == s.role else 0.0)
        out[s.role] = out.get(s.role, 0.0) + max(used, 0.0)
    return out


def memory_mb_by_role(samples: Iterable[Sample]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        out[s.role] = out.get(s.role, 0.0) + s.memory_bytes / MB
    return out
