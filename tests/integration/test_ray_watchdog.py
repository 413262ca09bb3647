"""The Ray session watchdog and the start-time reaper, on stand-in processes: only Ray's own
processes whose command line names the session dir (or that are recorded by pid and start
time) are stopped, never an operator's tail of its logs; the record goes only if it still
names that session; the watchdog never stops a session whose parent is alive."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from citycard.cli.ray_watchdog import (
    SessionRecord,
    reap_dead_session,
    session_processes,
    stop_session,
    watch,
)

_SLEEPER = "import sys, time; time.sleep(120)"
_DEAF = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"  # an agent


def _spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args])


def _spawn_ray(tmp_path: Path, code: str, *args: str) -> subprocess.Popen[bytes]:
    """A stand-in for one of Ray's Python daemons (its script lives under ray/_private/)."""
    script = tmp_path / "site" / "ray" / "_private" / "stand_in.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(code)
    return subprocess.Popen([sys.executable, str(script), *args])


def _gone(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        proc.wait(timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def _dead_owner() -> tuple[int, float]:
    owner = _spawn(_SLEEPER)
    started = psutil.Process(owner.pid).create_time()
    owner.kill()
    owner.wait(10)
    return owner.pid, started


def test_next_start_reaps_a_dead_runs_session_and_nothing_else(tmp_path: Path) -> None:
    session = str(tmp_path / "session_2026-12-07_00-00-00_000000_1")
    inside, deaf = _spawn_ray(tmp_path, _SLEEPER, f"--log_dir={session}/logs"), _spawn_ray(tmp_path, _DEAF, session)
    outside = _spawn_ray(tmp_path, _SLEEPER, session + "0")  # another session whose name starts the same
    try:
        time.sleep(0.3)  # the deaf one has ignored SIGTERM by now
        assert {p.pid for p in session_processes(session)} == {inside.pid, deaf.pid}
        pid, started = _dead_owner()
        record = tmp_path / "ray-session.s.json"
        SessionRecord(session, pid, started, "up").write(record)
        assert reap_dead_session(record) == 2
        assert _gone(inside, 5) and _gone(deaf, 10) and not record.exists()
        assert outside.poll() is None
    finally:
        for p in (inside, deaf, outside):
            p.kill()
            p.wait(10)


def test_a_live_owners_session_is_left_alone(tmp_path: Path) -> None:
    session = str(tmp_path / "session_live")
    inside = _spawn_ray(tmp_path, _SLEEPER, session)
    try:
        me = psutil.Process()
        record = tmp_path / "ray-session.s.json"
        SessionRecord(session, me.pid, me.create_time(), "up").write(record)
        assert reap_dead_session(record) == 0 and record.exists() and inside.poll() is None
    finally:
        inside.kill()
        inside.wait(10)


def test_watchdog_stops_the_session_when_its_parent_dies(tmp_path: Path) -> None:
    session = str(tmp_path / "session_watched")
    record = tmp_path / "ray-session.s.json"
    parent = _spawn(_SLEEPER)
    inside = _spawn_ray(tmp_path, _SLEEPER, session)
    parent_started = psutil.Process(parent.pid).create_time()
    SessionRecord(session, parent.pid, parent_started, "up").write(record)
    dog = subprocess.Popen([sys.executable, "-m", "citycard.cli.ray_watchdog", str(parent.pid),
                            repr(parent_started), session, str(record)])
    try:
        time.sleep(1.0)
        assert inside.poll() is None and dog.poll() is None  # the parent lives: nothing stopped
        parent.kill()
        parent.wait(10)
        t0 = time.monotonic()
        assert _gone(inside, 10), "session process still running after its parent died"
        assert dog.wait(10) == 0 and not record.exists()
        print(f"watchdog stopped the session {time.monotonic() - t0:.2f} s after the parent died")
    finally:
        for p in (parent, inside, dog):
            p.kill()
            p.wait(10)


def test_watchdog_keeps_a_record_naming_another_session(tmp_path: Path) -> None:
    record = tmp_path / "ray-session.s.json"
    pid, started = _dead_owner()
    SessionRecord("/elsewhere/session_new", psutil.Process().pid, psutil.Process().create_time(), "up").write(record)
    dog = subprocess.run([sys.executable, "-m", "citycard.cli.ray_watchdog", str(pid), repr(started),
                          str(tmp_path / "session_old"), str(record)], timeout=30)
    assert dog.returncode == 0 and SessionRecord.read(record).session_dir == "/elsewhere/session_new"


def test_watchdog_at_its_deadline_stops_nothing_while_the_parent_lives(tmp_path: Path) -> None:
    session = str(tmp_path / "session_long")
    record = tmp_path / "ray-session.s.json"
    me = psutil.Process()
    SessionRecord(session, me.pid, me.create_time(), "up").write(record)
    inside = _spawn_ray(tmp_path, _SLEEPER, session)
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        watch(me.pid, me.create_time(), session, record, None, max_s=0.3)  # a month, shortened
        assert time.monotonic() - t0 < 5
        assert not _gone(inside, 0.5), "the watchdog stopped a live platform's session at its deadline"
        assert record.exists()
    finally:
        inside.kill()
        inside.wait(10)


def test_an_operators_tail_of_the_session_logs_is_not_stopped(tmp_path: Path) -> None:
    session = str(tmp_path / "session_tailed")
    (tmp_path / "session_tailed" / "logs").mkdir(parents=True)
    log = f"{session}/logs/raylet.out"
    Path(log).write_text("")
    ray_proc = _spawn_ray(tmp_path, _SLEEPER, f"--session-dir={session}")
    tail = subprocess.Popen(["tail", "-f", log])
    shell = subprocess.Popen(["sh", "-c", f"tail -f {log} | cat; true"], start_new_session=True)  # and children
    try:
        time.sleep(0.3)
        assert {p.pid for p in session_processes(session)} == {ray_proc.pid}
        assert stop_session(session, term_wait_s=2.0) == 1
        assert _gone(ray_proc, 5)
        assert tail.poll() is None and shell.poll() is None
        assert len(psutil.Process(shell.pid).children(recursive=True)) == 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        for p in (ray_proc, tail, shell):
            p.kill()
            p.wait(10)
