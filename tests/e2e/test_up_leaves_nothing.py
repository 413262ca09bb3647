"""`citycard up` leaves no process behind: not when it stops on SIGTERM, and not (after a
bounded wait) when it is killed with SIGKILL - its shard actors, Ray's agents and the embedded
Postgres and Redis it started are stopped by its watchdog."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.cli import citycard_env, migrated_city


def _ready(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "citycard", "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line, deadline = "", time.monotonic() + 180
    while "gateway on" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail(f"citycard up exited: {proc.stderr.read()[-2000:]}")
    assert "gateway on" in line, "citycard up not ready in 180 s"
    return proc


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _cmd(p: psutil.Process) -> str:
    """A process's command line; "" once it has exited. The list of descendants is a snapshot:
    a short-lived child (a Ray worker starting up) may be gone before it is read (CI saw it)."""
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _until_none_alive(procs: list[psutil.Process], timeout_s: float) -> tuple[list[str], float]:
    started = time.monotonic()
    while (alive := _alive(procs)) and time.monotonic() - started < timeout_s:
        time.sleep(0.05)
    return alive, time.monotonic() - started


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:  # a failed test must not leave its run's processes behind either
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_sigterm_leaves_no_process(configured_services, schema):
    env = citycard_env(configured_services, schema)
    migrated_city(env, configured_services, schema, 20, 2)
    proc = _ready(env)
    procs = _descendants(proc.pid)
    try:
        assert any("raylet" in _cmd(p) for p in procs), [p.name() for p in procs]
        shards = [p for p in procs if _cmd(p).startswith("ray::AccountShard")]
        assert shards, [_cmd(p)[:60] for p in procs]
        # Ray would run them at nice 15, below the gateway and Postgres (docs/deploy.md)
        assert [p.nice() for p in shards] == [0] * len(shards)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        alive, _ = _until_none_alive(procs, 10.0)
        assert not alive, f"left running after SIGTERM: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_all(procs)


def test_kill_9_leaves_no_ray_or_embedded_process(tmp_path):
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("CITYCARD_") or k == "RAY_ADDRESS"]:
        del env[key]
    env.update({"CITYCARD_STATE_DIR": str(tmp_path / "state"), "CITYCARD_GATEWAY__PORT": "0",
                "CITYCARD_METRICS__PORT": "0", "CITYCARD_API__PORT": "0", "CITYCARD_RAY__NAMESPACE": tmp_path.name})
    proc = _ready(env)
    procs = _descendants(proc.pid)
    try:
        names = " ".join(_cmd(p) for p in procs)
        assert "postgres -D" in names and "redis-server" in names and "ray::AccountShard" in names, names
        shards = [p for p in procs if "ray::AccountShard" in _cmd(p)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        shards_alive, shards_s = _until_none_alive(shards, 10.0)
        alive, all_s = _until_none_alive(procs, 40.0)
        print(f"after kill -9: shard actors gone in {shards_s:.2f} s, every process in {all_s:.2f} s")
        assert not shards_alive, f"shard actors still running 10 s after kill -9: {shards_alive}"
        assert not alive, f"left running 40 s after kill -9: {alive}"
        assert not list((tmp_path / "state").glob("*.owner.json"))
        assert not list((tmp_path / "state").glob("ray-session.*.json"))
    finally:
        _kill_all(procs)
