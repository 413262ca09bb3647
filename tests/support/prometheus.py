"""A real Prometheus (Debian's /usr/bin/prometheus) for tests: a temporary config scraping given
targets every second, temporary storage, its own port on 127.0.0.1; and its HTTP API."""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

PROMETHEUS = "/usr/bin/prometheus"


def prometheus_binary() -> str:
    """The binary, or the test skips (fails under CI: .ci/run installs it)."""
    path = PROMETHEUS if os.access(PROMETHEUS, os.X_OK) else shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing (Debian package prometheus; .ci/run installs it)")
        pytest.skip("prometheus is missing (apt-get install prometheus)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def api(self, path: str, **params: Any) -> Any:
        r = self.http.get(f"/api/v1/{path}", params=params)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query's answer: labels (sorted, without __name__) -> value."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
                for r in data["result"]}

    def scalar(self, expr: str) -> float | None:
        """The one value of a query answered by one series (None: no series)."""
        answer = self.query(expr)
        assert len(answer) <= 1, answer
        return next(iter(answer.values()), None)

    def wait_for(self, what: str, ok: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus: {what} not seen in {timeout_s:g} s")
            time.sleep(0.25)


@contextmanager
def running_prometheus(tmp: Path, targets: list[str], rule_files: list[Path] = (),  # type: ignore[assignment]
                       job: str = "citycard", scrape_interval_ms: int = 1000) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    port = free_port()
    config = tmp / "prometheus.yml"
    rules = "".join(f"\n  - {p}" for p in rule_files)
    config.write_text(
        f"global:\n  scrape_interval: {scrape_interval_ms}ms\n  evaluation_interval: {scrape_interval_ms}ms\n"
        f"rule_files:{rules or ' []'}\n"
        f"scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: {targets!r}\n")
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        prom.wait_for("ready", lambda: _ready(prom, proc), timeout_s=30)
        yield prom
    finally:
        prom.http.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _ready(prom: Prometheus, proc: "subprocess.Popen[bytes]") -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"prometheus exited with {proc.returncode}")
    try:
        return prom.http.get("/-/ready").status_code == 200
    except httpx.HTTPError:
        return False
