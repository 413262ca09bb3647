"""The platform on a two-node Ray cluster (docs/deploy.md): token auth, shards spread over both
nodes, two gateways (the second ``up --attach``), the demo's money audit; then the worker node
dies, its shards restart on the head, more taps go through and nothing is lost; then the first
gateway restarts and the attached one, not restarted, serves again on the new actors."""

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest

from citycard.loadtest import audit as audit_mod
from citycard.loadtest.drive import DriveResult, DriveSpec, drive
from citycard.persistence import db
from citycard.terminal.client import TerminalClient
from tests.support.cli import CITYCARD, citycard_env, gateway_port, migrated_city
from tests.support.ray_cluster import TwoNodeCluster, inspect

pytestmark = pytest.mark.services
ACCOUNTS, SESSIONS, CARDS = 4, 2, 400


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[TwoNodeCluster]:
    """One cluster for the module (a start costs ~10 s); the test that kills its worker runs last."""
    c = TwoNodeCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
    assert not c.head.processes() and not c.worker.processes(), "the cluster's processes outlived its stop"


def _up(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*CITYCARD, "up", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line, deadline = "", time.monotonic() + 90
    while "gateway on" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail(f"citycard up {' '.join(args)} exited: {proc.stderr.read()[-3000:]}")
    assert "gateway on" in line, "citycard up gave no readiness line in 90 s"
    return proc, gateway_port(line)


def _stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def _drive(ports: list[int], key: bytes, terminals: list, seed: int) -> list[DriveResult]:
    """A round of taps: two terminals through each gateway at once."""
    specs = [DriveSpec("127.0.0.1", port, key, terminals[2 * i:2 * i + 2], CARDS, 300, batch_taps=10,
                       window=2, retry_share=0.05, seed=seed + i, time_limit_s=60)
             for i, port in enumerate(ports)]

    async def run() -> list[DriveResult]:
        return list(await asyncio.gather(*[drive(s) for s in specs]))

    results = asyncio.run(run())
    for r in results:
        assert not r.errors and r.taps_answered == r.taps_sent, (r.errors, r.taps_answered, r.taps_sent)
    return results


def _serves_again(port: int, key: bytes, terminals: list, timeout_s: float) -> float:
    """Seconds until each terminal authenticates through ``port`` (each try its own connection)."""

    async def run() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for t in terminals:
            while True:
                client = TerminalClient(t.terminal_id, key)
                try:
                    await client.connect("127.0.0.1", port)
                    break
                except Exception:  # noqa: BLE001 - "authentication service unavailable, try again"
                    assert loop.time() - t0 < timeout_s, "the attached gateway did not serve again"
                    await asyncio.sleep(0.5)
                finally:
                    await client.close()
        return loop.time() - t0

    return asyncio.run(run())


def _audit(db_url: str, schema: str, balances: dict[int, int]) -> audit_mod.Audit:
    async def run() -> audit_mod.Audit:
        conn = await db.connect(db_url, schema)
        try:
            return await audit_mod.run_audit(conn, balances)
        finally:
            await conn.close()

    return asyncio.run(run())


def _nodes_of(seen: dict) -> set[str]:
    return {a["node"] for a in seen["actors"].values() if a["state"] == "ALIVE"}


def test_a_wrong_token_is_one_line_naming_the_setting(configured_services, schema, cluster, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    env = citycard_env(configured_services, schema, ray_namespace="cluster", RAY_ADDRESS=cluster.address,
                       CITYCARD_RAY__AUTH_TOKEN_FILE=str(wrong), CITYCARD_API__PORT="0",
                       CITYCARD_STATE_DIR=str(tmp_path / "state"))
    done = subprocess.run([*CITYCARD, "up"], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("citycard: the Ray cluster at ray.address") and "ray.auth_token_file" in last, last


def test_no_cluster_at_the_address_is_one_line(configured_services, schema, tmp_path):
    env = citycard_env(configured_services, schema, RAY_ADDRESS="127.0.0.1:1", CITYCARD_API__PORT="0",
                       CITYCARD_STATE_DIR=str(tmp_path / "state"))
    done = subprocess.run([*CITYCARD, "up"], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "citycard: no Ray cluster answers at ray.address (RAY_ADDRESS) 127.0.0.1:1: Connection refused;"
        " start its head with `ray start --head` or set the head's address"]


def test_attach_with_no_platform_on_the_cluster_is_one_line(configured_services, schema, cluster, tmp_path):
    env = citycard_env(configured_services, schema, ray_namespace="cluster", RAY_ADDRESS=cluster.address,
                       CITYCARD_RAY__AUTH_TOKEN_FILE=str(cluster.token_file), CITYCARD_API__PORT="0",
                       CITYCARD_STATE_DIR=str(tmp_path / "state"))
    subprocess.run([*CITYCARD, "db", "migrate"], env=env, check=True, capture_output=True, timeout=120)
    done = subprocess.run([*CITYCARD, "up", "--attach"], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"citycard: --attach: no platform runs on the Ray cluster at {cluster.address} for database.schema {schema}"
        f" in ray.namespace cluster-{schema} (no actor {schema}:account:0): start the first gateway with"
        " `citycard up`, and give every gateway the same settings")


def test_two_gateways_on_two_nodes_survive_the_worker_node_dying(configured_services, schema, cluster, tmp_path):
    ns = f"cluster-{schema}"
    env = citycard_env(configured_services, schema, ray_namespace="cluster", RAY_ADDRESS=cluster.address,
                       CITYCARD_RAY__AUTH_TOKEN_FILE=str(cluster.token_file), CITYCARD_API__PORT="0",
                       CITYCARD_CITY__ACCOUNT_SHARDS=str(ACCOUNTS), CITYCARD_CITY__SESSION_SHARDS=str(SESSIONS),
                       CITYCARD_STATE_DIR=str(tmp_path / "state"))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)  # the token comes from the setting alone
    settings, _cards, terminals = migrated_city(env, configured_services, schema, CARDS, 10, shards=ACCOUNTS)
    key = settings.city.master_key
    first, port_a = _up(env)
    second = None
    try:
        second, port_b = _up(env, "--attach")
        seen = inspect(cluster, ns, schema, ACCOUNTS)
        assert len(seen["actors"]) == ACCOUNTS + SESSIONS
        # placed on purpose: shard i on node i mod 2, the head first (not wherever Ray's default put them)
        on_head = {n: a["node"] == seen["head"] for n, a in seen["actors"].items()}
        assert on_head == {f"{schema}:{role}:{i}": i % 2 == 0 for role, count in (("account", ACCOUNTS),
                           ("session", SESSIONS)) for i in range(count)}, f"not spread as placed: {seen['actors']}"
        assert len(_nodes_of(seen)) == 2

        before = _drive([port_a, port_b], key, terminals[:4], seed=1)
        seen = inspect(cluster, ns, schema, ACCOUNTS, balances=True)
        audit = _audit(configured_services.db_url, schema, seen["balances"])
        assert audit.ok, audit.as_dict()
        assert audit.charged_fen == sum(r.charged_fen for r in before) > 0

        assert cluster.worker.kill() > 0  # the worker host crashes: raylet, agents, its actors
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                seen = inspect(cluster, ns, schema, ACCOUNTS)
            except RuntimeError:  # a client joining while the GCS declares the node dead may fail: ask again
                time.sleep(1)
                continue
            alive = [a for a in seen["actors"].values() if a["state"] == "ALIVE"]
            if len(alive) == ACCOUNTS + SESSIONS and _nodes_of(seen) == {seen["head"]}:
                break
            time.sleep(1)
        assert _nodes_of(seen) == {seen["head"]}, f"the worker's shards did not move to the head: {seen['actors']}"

        after = _drive([port_a, port_b], key, terminals[4:8], seed=11)  # new terminals: new (terminal, seq) keys

        # the first gateway restarts: its actors are killed and made again under the same names; the
        # attached gateway, not restarted, finds them by name and serves again
        assert _stop(first) == 0
        first, _port_a = _up(env)
        print(f"attached gateway served again {_serves_again(port_b, key, terminals[8:10], 30):.1f} s"
              " after the first gateway's restart")
        again = _drive([port_b], key, terminals[8:10], seed=21)
        seen = inspect(cluster, ns, schema, ACCOUNTS, balances=True)
        audit = _audit(configured_services.db_url, schema, seen["balances"])
        assert audit.ok, audit.as_dict()
        assert audit.charged_fen == sum(r.charged_fen for r in before + after + again)
    finally:
        codes = [_stop(p) for p in (second, first) if p is not None]
    assert codes == [0, 0], f"gateways did not stop cleanly: {codes}"
