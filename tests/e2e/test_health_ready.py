"""Liveness, readiness, `citycard status` and the offline /docs, on a real platform over real
sockets (docs/api.md, docs/operations.md)."""

import asyncio
import json
import re
import socket
import subprocess

import pytest
import redis.asyncio as aioredis

from tests.support.city import api_city
from tests.support.cli import CITYCARD

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"CITYCARD_API__PORT": str(port), "CITYCARD_API__HOST": "127.0.0.1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([*CITYCARD, "status", *extra], env=env, capture_output=True, text=True, timeout=60)


def test_live_ready_and_status_on_a_running_platform(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=20, n_terminals=1) as api:
            n_shards = api.city.settings.city.account_shards
            r = await api.http.get("/health/live")
            assert (r.status_code, r.json()) == (200, {"status": "live"})
            r = await api.http.get("/health/ready")
            assert r.status_code == 200, r.text
            shards = {f"shard {i}": "ok" for i in range(n_shards)}
            assert r.json() == {"status": "ready", "not_ready": [],
                                "components": {"postgres": "ok", "redis": "ok", **shards}}
            # a poller hammering it costs the shards one small call each per second, not one per request
            readiness = api.city.platform.api.app.state.readiness
            checks = readiness.checks
            answers = await asyncio.gather(*(api.http.get("/health/ready") for _ in range(100)))
            assert {a.status_code for a in answers} == {200}
            assert readiness.checks - checks <= 2, readiness.checks - checks

            port = api.city.platform.api_port
            done = await asyncio.to_thread(_status, port)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "ready" in done.stdout.splitlines()[0] and "shard 0" in done.stdout, done.stdout
            done = await asyncio.to_thread(_status, port, "--json")
            assert done.returncode == 0 and json.loads(done.stdout)["components"] == r.json()["components"]

            # Redis gone (a client to a port nobody listens on): not ready, and Redis named
            readiness.redis = aioredis.Redis(host="127.0.0.1", port=_free_port(), socket_connect_timeout=1)
            await asyncio.sleep(1.1)  # past the cached answer
            r = await api.http.get("/health/ready")
            assert r.status_code == 503 and r.json()["not_ready"] == ["redis"], r.text
            assert r.json()["components"]["redis"].startswith(("unreachable", "no answer in 2 s"))
            done = await asyncio.to_thread(_status, port)
            assert done.returncode == 1, done.stdout + done.stderr
            assert "NOT READY" in done.stdout and re.search(r"redis\s+(unreachable|no answer)", done.stdout), done.stdout
            r = await api.http.get("/health/live")
            assert r.status_code == 200  # liveness asks no dependency

    asyncio.run(scenario())


def test_status_with_no_platform_is_one_line_naming_api_port_and_exit_2():
    port = _free_port()
    done = _status(port)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and f"api.port = 127.0.0.1:{port}" in lines[0], lines
    assert "Traceback" not in done.stderr


def test_docs_and_redoc_load_nothing_from_another_host(configured_services, schema):
    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=10, n_terminals=1) as api:
            for page in ("/docs", "/redoc"):
                r = await api.http.get(page)
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
                html = r.text
                assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", html), html
                assert "cdn" not in html.lower() and "fonts.googleapis" not in html, html
                assets = re.findall(r"(?:src|href)\s*=\s*['\"](/[^'\"]+)['\"]", html)
                assert any(a.endswith(".js") for a in assets), (page, assets)
                for asset in assets:
                    got = await api.http.get(asset)
                    assert got.status_code == 200 and len(got.content) > 0, (page, asset, got.status_code)
                spec = re.findall(r"url:\s*['\"](/[^'\"]+)['\"]", html) + re.findall(r"spec-url=['\"](/[^'\"]+)", html)
                for url in spec:
                    assert (await api.http.get(url)).status_code == 200, url

    asyncio.run(scenario())


def test_a_shard_restarted_by_ray_on_an_idle_platform_becomes_ready_again(configured_services, schema):
    import ray

    async def scenario() -> None:
        async with api_city(configured_services, schema, n_cards=10, n_terminals=1) as api:
            assert (await api.http.get("/health/ready")).status_code == 200
            shard = api.city.platform.shards[0]
            old_pid = await shard.pid.remote()
            ray.kill(shard, no_restart=False)  # Ray restarts it empty; no tap or op will call it
            new_pid = old_pid
            for _ in range(120):  # the restart: up to ~60 s
                await asyncio.sleep(0.5)
                try:
                    new_pid = await asyncio.wait_for(shard.pid.remote(), 5)  # pid() loads nothing
                except Exception:  # noqa: BLE001 - still restarting
                    continue
                if new_pid != old_pid:
                    break
            assert new_pid != old_pid
            await asyncio.sleep(1.1)  # past any answer cached before the kill
            states = []
            for _ in range(120):  # only the readiness checks reach the shard now
                r = await api.http.get("/health/ready")
                states.append(r.json()["components"]["shard 0"])
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.5)
            assert states[-1] == "ok" and r.status_code == 200, states[-10:]
            assert states[0] in ("loading", "ok"), states  # it answered as soon as it was up

    asyncio.run(scenario())
