"""`citycard loadtest --target` says in one line why a run failed, and exits non-zero with no
traceback: when the platform refuses (nearly) every tap (its shards never loaded the city's
cards), and when the platform stops during the run (docs/loadtest.md)."""

import asyncio
import signal
import socket
import subprocess
import time

import pytest

from citycard.loadtest.city import city_for_scale
from citycard.loadtest.targets import seed_model
from citycard.persistence import db
from tests.support.cli import CITYCARD, citycard_env, gateway_port

pytestmark = pytest.mark.services

SCALE = "0.0005"
RUN = ["--terminals", "8", "--senders", "1", "--rate", "200", "--timeout-ms", "2000", "--no-report"]


def _up(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    up = subprocess.Popen([*CITYCARD, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL)
    line = up.stdout.readline()  # "citycard up: gateway on 127.0.0.1:PORT, ..."
    assert "gateway on" in line, up.stderr.read() if up.poll() is not None else line
    return up, gateway_port(line)


def _stop(up: subprocess.Popen[str]) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def test_a_run_refused_card_unknown_throughout_fails_naming_the_code(configured_services, schema):
    env = citycard_env(configured_services, schema, "verdict")
    subprocess.run([*CITYCARD, "db", "migrate"], env=env, check=True, capture_output=True, timeout=120)
    up, port = _up(env)  # its shards load an empty city
    try:
        async def seed() -> None:  # the city arrives after the platform started: it knows none of the cards
            conn = await db.connect(configured_services.db_url, schema)
            try:
                await seed_model(conn, city_for_scale(float(SCALE)), 2, 5)
            finally:
                await conn.close()

        asyncio.run(seed())
        done = subprocess.run([*CITYCARD, "loadtest", "--target", f"127.0.0.1:{port}", *RUN, "--duration", "2",
                               "--json"], env=env, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)
    finally:
        _stop(up)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    why = [ln for ln in done.stderr.splitlines() if ln.startswith("citycard loadtest: FAILED: ")]
    assert len(why) == 1, done.stderr[-3000:]
    assert "answered taps were refused (CARD_UNKNOWN" in why[0] and "seeded after it started" in why[0], why[0]


def test_a_target_that_stops_during_the_run_is_one_line_and_exit_1(configured_services, schema):
    env = citycard_env(configured_services, schema, "verdict")
    seeded = subprocess.run([*CITYCARD, "city", "seed", "--scale", SCALE], env=env, capture_output=True, text=True,
                            timeout=120)
    assert seeded.returncode == 0, seeded.stderr
    up, port = _up(env)
    try:
        lab = subprocess.Popen([*CITYCARD, "loadtest", "--target", f"127.0.0.1:{port}", *RUN, "--duration", "8"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
        time.sleep(4)
        up.send_signal(signal.SIGTERM)
        out, err = lab.communicate(timeout=240)
    finally:
        _stop(up)
    assert lab.returncode == 1, out + err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    result = [ln for ln in out.splitlines() if ln.startswith("result: ")]
    assert len(result) == 1 and result[0].startswith(
        f"result: FAILED: the target 127.0.0.1:{port} closed or refused connections: "), out
    assert " taps answered" in result[0]


def test_a_target_that_refuses_from_the_start_is_one_line_and_exit_1(configured_services, schema):
    env = citycard_env(configured_services, schema, "verdict")
    seeded = subprocess.run([*CITYCARD, "city", "seed", "--scale", SCALE], env=env, capture_output=True, text=True,
                            timeout=120)
    assert seeded.returncode == 0, seeded.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([*CITYCARD, "loadtest", "--target", f"127.0.0.1:{port}", *RUN, "--duration", "2"],
                          env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"citycard loadtest: FAILED: the target 127.0.0.1:{port} closed or refused connections "
                           "before any tap was sent"), line
