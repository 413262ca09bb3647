"""The pure core type-checks under mypy --strict (configured in pyproject.toml)."""

import subprocess
import sys

from tests.support.paths import ROOT


def test_domain_and_protocols_pass_mypy_strict():
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "citycard/domain", "citycard/protocols"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
