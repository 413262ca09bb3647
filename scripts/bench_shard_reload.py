"""A big city's shards loading and recovering: start ``citycard up`` on a seeded schema, time
until every shard is ready (``GET /health/ready``), read each shard's memory, then kill one
shard's process with SIGKILL and time until the platform is ready again. Prints one JSON line.

    # after `citycard loadtest --day --scale 1` (its schema stays) or `citycard city seed --scale 1`:
    CITYCARD_DATABASE__SCHEMA=citycard_loadtest python3 scripts/bench_shard_reload.py

Bytes per card: a shard's RSS over its cards (the city's cards split over the shards).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

POLL_S = 0.5
READY_LIMIT_S = 1800.0  # a shard of millions of cards takes minutes; this bounds the wait


def wait_ready(url: str, limit_s: float, since_s: float) -> float:
    """Seconds from ``since_s`` (a perf_counter time) until /health/ready answers 200."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        try:
            if httpx.get(url, timeout=5.0).status_code == 200:
                return time.perf_counter() - since_s
        except httpx.HTTPError:
            pass
        time.sleep(POLL_S)
    raise SystemExit(f"not ready within {limit_s:g} s")


def shard_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::AccountShard"):
            found.append(p)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", default="http://127.0.0.1:7780", help="the platform's API (api.host:api.port)")
    args = ap.parse_args()
    ready_url = args.api + "/health/ready"
    started = time.perf_counter()
    up = subprocess.Popen([sys.executable, "-m", "citycard", "up"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert up.stdout is not None
        line = up.stdout.readline()  # "citycard up: gateway on ..."
        up_line_s = time.perf_counter() - started
        load_s = wait_ready(ready_url, READY_LIMIT_S, started)
        shards = shard_processes()
        rss_mb = {p.pid: round(p.memory_info().rss / 2**20) for p in shards}
        victim = shards[0]
        killed = time.perf_counter()
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(POLL_S * 4)  # the watch notices the dead actor before readiness is asked again
        recover_s = wait_ready(ready_url, READY_LIMIT_S, killed)
        after = {p.pid: round(p.memory_info().rss / 2**20) for p in shard_processes()}
        print(json.dumps({"up_line": line.strip(), "up_line_s": round(up_line_s, 1), "ready_s": round(load_s, 1),
                          "shard_rss_mb": rss_mb, "killed_pid": victim.pid, "recovered_s": round(recover_s, 1),
                          "shard_rss_mb_after": after}))
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=120)
        except subprocess.TimeoutExpired:
            up.kill()


if __name__ == "__main__":
    main()
