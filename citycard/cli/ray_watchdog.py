"""A dead platform's local Ray session stopped, not left applying taps.

``citycard up`` records its local Ray session (the session dir and the processes in it, each by
pid and start time) in the state dir, and starts this module as a small detached process that
watches it: when the platform's process dies (kill -9 included), the watchdog stops that session's
processes (SIGTERM, then SIGKILL after a bounded wait: some Ray agents ignore SIGTERM) and the
embedded servers the platform owned. The next start reaps a session whose owner and watchdog
both died. Only Ray's own processes (raylet, gcs_server, Ray's Python daemons, ``ray::`` workers)
whose command line names the session dir or whose ancestor's does, and the recorded processes
(same pid AND start time) are ever signalled: an operator's ``tail -f .../logs/raylet.out`` is not.
The watchdog has no deadline of its own: it lives exactly as long as its parent.

Run as ``python -m citycard.cli.ray_watchdog PARENT_PID PARENT_STARTED SESSION_DIR RECORD [STATE_DIR]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from ..persistence.embedded_owner import is_running, started_at, stop_orphans

POLL_S = 0.05
TERM_WAIT_S = 3.0  # then SIGKILL
KILL_WAIT_S = 3.0
_RAY_BINARIES = frozenset({"raylet", "gcs_server"})
# Ray's Python daemons (log monitor, dashboard, autoscaler monitor) and a worker before it renames itself
_RAY_SCRIPT_DIRS = ("/ray/_private/", "/ray/dashboard/", "/ray/autoscaler/")


@dataclass
class SessionRecord:
    session_dir: str
    owner_pid: int
    owner_started: float
    command: str
    processes: list[list[float]] = field(default_factory=list)  # [pid, start time]

    @staticmethod
    def read(path: Path) -> SessionRecord | None:
        try:
            return SessionRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)


def unlink_if_names(path: Path, session_dir: str) -> None:
    """Remove the record only if it still names ``session_dir`` (a later run may own it now)."""
    record = SessionRecord.read(path)
    if record is not None and record.session_dir == session_dir:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _names(arg: str, session_dir: str) -> bool:
    return arg.endswith(session_dir) or session_dir + "/" in arg


def is_ray_process(cmdline: list[str]) -> bool:
    """Whether a command line is one of Ray's own processes (not a shell or a tail reading its logs)."""
    if not cmdline:
        return False
    if cmdline[0].startswith("ray::") or os.path.basename(cmdline[0]) in _RAY_BINARIES:
        return True
    script = next((a for a in cmdline[1:4] if a.endswith(".py")), "")
    return script.endswith("/default_worker.py") or any(d in script for d in _RAY_SCRIPT_DIRS)


def _is_worker(proc: psutil.Process) -> bool:
    try:
        title = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return title.startswith("ray::") and not title.split()[0].endswith("Agent")


def session_processes(session_dir: str, recorded: list[list[float]] = ()) -> list[psutil.Process]:
    """The session's processes: Ray's own whose command line names its dir, their Ray descendants
    (the raylet's workers and agents rename themselves ``ray::...``), and the recorded ones still running."""
    mine = {os.getpid()}
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.pid not in mine and is_ray_process(cmdline) and any(_names(a, session_dir) for a in cmdline):
            found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in proc.children(recursive=True) if c.pid not in mine and _ray_child(c)})
    for pid, started in recorded:
        if int(pid) not in found and int(pid) not in mine and is_running(int(pid), started):
            with contextlib.suppress(psutil.Error):
                found[int(pid)] = psutil.Process(int(pid))
    return list(found.values())


def _ray_child(proc: psutil.Process) -> bool:
    try:
        return is_ray_process(proc.cmdline())
    except psutil.Error:
        return False


def stop_session(session_dir: str, recorded: list[list[float]] = (), *,
                 term_wait_s: float = TERM_WAIT_S) -> int:
    """SIGTERM the session's processes, SIGKILL what is left after ``term_wait_s``; how many were found."""
    procs = session_processes(session_dir, recorded)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            # workers (the shard actors among them) at once: they must not apply another tap for a
            # platform that is gone, and a kill loses nothing committed (a commit is atomic)
            proc.send_signal(signal.SIGKILL if _is_worker(proc) else signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=term_wait_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=KILL_WAIT_S)
    return len(procs)


def reap_dead_session(record_path: Path) -> int:
    """At start: stop a session left by a run whose owner died (its watchdog died too)."""
    record = SessionRecord.read(record_path)
    if record is None or is_running(record.owner_pid, record.owner_started):
        return 0
    found = stop_session(record.session_dir, record.processes)
    unlink_if_names(record_path, record.session_dir)
    return found


def start_watchdog(session_dir: str, record_path: Path, state_dir: Path | None) -> subprocess.Popen[bytes]:
    """The watchdog for this process, detached (own session: a Ctrl-C or kill of ours spares it)."""
    me = psutil.Process()
    argv = [sys.executable, "-m", "citycard.cli.ray_watchdog", str(me.pid), repr(me.create_time()), session_dir,
            str(record_path)] + ([str(state_dir)] if state_dir is not None else [])
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True, cwd="/")


def watch(parent_pid: int, parent_started: float, session_dir: str, record_path: Path,
          state_dir: Path | None, *, max_s: float | None = None) -> None:
    """Wait for the parent to die, then stop its session. ``max_s`` (tests): give up watching
    after that long and stop nothing, as the parent may still be serving."""
    deadline = None if max_s is None else time.monotonic() + max_s
    while is_running(parent_pid, parent_started):
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(POLL_S)
    record = SessionRecord.read(record_path)
    recorded = record.processes if record is not None and record.session_dir == session_dir else []
    stop_session(session_dir, recorded)
    unlink_if_names(record_path, session_dir)
    if state_dir is not None:
        stop_orphans(state_dir, owner_pid=parent_pid)  # the embedded servers it owned


class RayGuard:
    """This run's local Ray session, recorded and watched; ``close`` stops what is left of it."""

    def __init__(self, session_dir: str, record_path: Path, record: SessionRecord,
                 watchdog: subprocess.Popen[bytes]) -> None:
        self.session_dir, self.record_path, self.record, self.watchdog = session_dir, record_path, record, watchdog

    @classmethod
    def start(cls, session_dir: str, record_path: Path, command: str, state_dir: Path | None) -> RayGuard:
        me = psutil.Process()
        record = SessionRecord(session_dir, me.pid, me.create_time(), command)
        record.write(record_path)
        guard = cls(session_dir, record_path, record, start_watchdog(session_dir, record_path, state_dir))
        guard.note_processes()
        return guard

    def note_processes(self) -> None:
        """Record the session's processes now (its workers start with the actors)."""
        procs = [p for p in session_processes(self.session_dir) if p.pid != self.watchdog.pid]
        self.record.processes = [[p.pid, t] for p in procs if (t := started_at(p.pid)) is not None]
        self.record.write(self.record_path)

    def close(self) -> int:
        """After ray.shutdown(): stop what outlived it (agents ignoring SIGTERM, the watchdog)."""
        found = stop_session(self.session_dir, self.record.processes)
        unlink_if_names(self.record_path, self.session_dir)
        if self.watchdog.poll() is None:
            self.watchdog.terminate()  # we are alive: it stops nothing on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.watchdog.wait(KILL_WAIT_S)
        return found


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    watch(int(argv[0]), float(argv[1]), argv[2], Path(argv[3]), Path(argv[4]) if len(argv) == 5 else None)
    return 0


__all__ = ["RayGuard", "SessionRecord", "reap_dead_session", "session_processes", "start_watchdog", "started_at",
           "stop_session", "unlink_if_names"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
