"""A two-node Ray cluster on this machine for tests: two ``ray start`` (the venv's own ``ray``),
each with its own temp dir and ports, token auth on as a real cluster has it; a worker node that
can be killed like a crashed host; and a stop that ends only this cluster's processes (never a
bare ``ray stop``, which would end every Ray on the machine)."""

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 60.0
# The GCS declares a silent node dead after period x threshold: ~1.5 s instead of Ray's ~15 s.
FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
               "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "500"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    temp_dir: Path
    head: bool

    def processes(self) -> list[psutil.Process]:
        """This node's processes: those naming its temp dir, and all their descendants."""
        mark = str(self.temp_dir)
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(mark in arg for arg in (p.info["cmdline"] or [])):
                    roots.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        seen = {p.pid: p for p in roots}
        for p in roots:
            try:
                seen.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        return list(seen.values())

    def kill(self, sig: int = signal.SIGKILL) -> int:
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                continue
        return len(procs)


@dataclass
class TwoNodeCluster:
    """Head and one worker node; ``env`` is what a client of it needs (address and token)."""

    base: Path
    token_file: Path = field(init=False)
    gcs_port: int = field(init=False)
    head: Node = field(init=False)
    worker: Node = field(init=False)

    def __post_init__(self) -> None:
        self.token_file = self.base / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.gcs_port = _free_port()
        # Unix socket paths must stay short: temp dirs directly under /tmp.
        self.head = Node(Path(tempfile.mkdtemp(prefix="rch", dir="/tmp")), head=True)
        self.worker = Node(Path(tempfile.mkdtemp(prefix="rcw", dir="/tmp")), head=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def client_env(self) -> dict[str, str]:
        """For a Ray client of this cluster in a child process (never set in the test process)."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def _ray_start(self, node: Node, *extra: str) -> None:
        low = random.randrange(30_000, 32_000, 100)  # worker ports: a block of their own
        args = [RAY, "start", f"--temp-dir={node.temp_dir}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                "--object-store-memory=100000000", "--disable-usage-stats",
                f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
                f"--min-worker-port={low}", f"--max-worker-port={low + 99}",
                f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}", *extra]
        env = dict(os.environ) | FAST_HEALTH | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        self._ray_start(self.head, "--head", f"--port={self.gcs_port}", "--include-dashboard=false",
                        f"--ray-client-server-port={_free_port()}")
        self._ray_start(self.worker, f"--address={self.address}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL whatever of either node is left (bounded)."""
        for node in (self.worker, self.head):
            node.kill(signal.SIGTERM)
        deadline = time.monotonic() + 3  # two Ray agents ignore SIGTERM
        while time.monotonic() < deadline and (self.head.processes() or self.worker.processes()):
            time.sleep(0.2)
        for node in (self.worker, self.head):
            node.kill(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (self.head.processes() or self.worker.processes()):
            time.sleep(0.2)
        for node in (self.worker, self.head):
            shutil.rmtree(node.temp_dir, ignore_errors=True)  # Ray's session dirs and logs


# Run in a child process as a client of the cluster: where each of a platform's actors lives,
# and the account shards' balances (the audit's in-memory side).
_INSPECT = r"""
import json, sys, ray
from ray._private import state
ns, schema, n_accounts = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(namespace=ns, logging_level="ERROR", log_to_driver=False)
head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])
where = {}
for a in state.actors().values():
    if a.get("Name", "").startswith(schema + ":"):
        where[a["Name"]] = {"node": a["Address"]["NodeID"], "state": a["State"]}
balances = {}
if sys.argv[4] == "balances":
    for i in range(n_accounts):
        balances.update(ray.get(ray.get_actor(f"{schema}:account:{i}").balances.remote(), timeout=60))
print("INSPECT " + json.dumps({"head": head, "actors": where, "balances": {str(k): v for k, v in balances.items()}}))
"""


def inspect(cluster: TwoNodeCluster, namespace: str, schema: str, n_accounts: int,
            balances: bool = False) -> dict[str, Any]:
    env = dict(os.environ) | cluster.client_env()
    done = subprocess.run([sys.executable, "-c", _INSPECT, namespace, schema, str(n_accounts),
                           "balances" if balances else "-"], env=env, capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"inspecting the cluster failed: {done.stderr[-2000:]}")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("INSPECT ")]  # Ray may print too
    if not lines:
        raise RuntimeError(f"inspecting the cluster printed no answer: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    out = json.loads(lines[-1].removeprefix("INSPECT "))
    out["balances"] = {int(k): v for k, v in out["balances"].items()}
    return out
