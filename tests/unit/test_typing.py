"""The pure core and the card-services layer type-check under mypy --strict (configured in
pyproject.toml); this is how CI runs mypy."""

import subprocess
import sys

from tests.support.paths import ROOT


def test_domain_protocols_and_card_services_pass_mypy_strict():
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "citycard/domain", "citycard/protocols", "citycard/cards"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
