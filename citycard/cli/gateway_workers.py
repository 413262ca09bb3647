"""More gateway processes on this host (``gateway.processes``): each is an attached gateway
(``Platform(attach=True)``) on the first one's port, the kernel spreading new connections over
them (SO_REUSEPORT).

Why: one process holds at most its open-file limit of connections (20,000 on the reference
machine, Ray's and Postgres's own files included), and one Python process decodes frames on one
core. A city's tens of thousands of terminals need several, as a real deployment would run.

A worker is ``python -m citycard.cli.gateway_workers``; it reads its settings as JSON on stdin
(they hold keys: never on the command line) and prints ``ready`` once it listens. It dies with
the process that started it (PR_SET_PDEATHSIG), so a ``kill -9`` of ``up`` leaves none behind.
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1
WORKER_MODULE = "citycard.cli.gateway_workers"  # loadtest/procs.py counts these as the gateway


def worker_settings(settings: dict[str, Any], *, index: int, db_url: str, app_db_url: str, redis_url: str,
                    ray_address: str, port: int) -> dict[str, Any]:
    """Worker ``index``'s settings (1..n-1): the first gateway's, joined to its services and its
    Ray, on its port; metrics on the next ports up (9109, 9110, ... beside 9108), or off."""
    s = copy.deepcopy(settings)
    s["database"]["url"], s["database"]["app_url"], s["redis"]["url"] = db_url, app_db_url, redis_url
    s["ray"]["address"] = ray_address
    s["gateway"]["port"] = port
    s["metrics"]["port"] = s["metrics"]["port"] + index if s["metrics"]["port"] else 0
    s["api"]["port"] = 0  # card services stay with the first process
    return s


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class GatewayWorkers:
    """Starts and stops the extra gateway processes of one platform."""

    def __init__(self, settings: list[dict[str, Any]]) -> None:
        self._settings = settings
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        for s in self._settings:
            proc = subprocess.Popen(  # noqa: S603 - our own module, by the running interpreter
                [sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                preexec_fn=_die_with_parent)
            self.procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(s).encode())
            proc.stdin.close()
        await asyncio.gather(*[self._ready(p) for p in self.procs])

    async def _ready(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await asyncio.to_thread(self._wait_ready, proc)
        except TimeoutError:
            proc.kill()  # ends the reading thread too
            raise ConfigError(f"gateway process {proc.pid} not ready after {READY_TIMEOUT_S:.0f} s") from None

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(b"ready"):
            proc.kill()
            raise ConfigError(f"gateway process {proc.pid} did not start (exit {proc.wait()}); its error is above")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                await asyncio.to_thread(p.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("gateway process %s did not stop in %s s; killed", p.pid, STOP_TIMEOUT_S)
                p.kill()
                await asyncio.to_thread(p.wait)


async def _serve(settings_dict: dict[str, Any]) -> int:
    from ..config.settings import settings_from_dict
    from .runtime import Platform
    from .services import resolve_services

    settings = settings_from_dict(settings_dict)
    services = resolve_services(settings)
    platform = Platform(settings, services, attach=True)
    stop = asyncio.Event()
    try:
        await platform.start(api_port=-1)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
            loop.add_signal_handler(sig, stop.set)
        print(f"ready {os.getpid()} port {platform.gateway_port}", flush=True)
        await stop.wait()
        return 0
    finally:
        await platform.stop()
        services.stop()


def main() -> int:
    import uvloop

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings_dict = json.loads(sys.stdin.read())
    sys.stdin.close()
    return uvloop.run(_serve(settings_dict))


if __name__ == "__main__":
    sys.exit(main())
